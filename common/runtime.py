"""What a running service holds: its settings and the clients the lifespan opened for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from common.broker import Broker
from common.database import Database
from common.outbox import Outbox
from common.settings import ServiceSettings
from common.tasks import BackgroundTasks

if TYPE_CHECKING:
    from common.calls import DirectCalls

T = TypeVar("T")


class Resources:
    """Service-specific objects opened by the lifespan (a process pool, say), looked up by type."""

    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}

    def add(self, resource: object, as_type: type | None = None) -> None:
        kind = as_type or type(resource)
        if kind in self._by_type:
            raise ValueError(f"a {kind.__name__} is already registered")
        self._by_type[kind] = resource

    def get(self, kind: type[T]) -> T:
        try:
            resource = self._by_type[kind]
        except KeyError:
            raise LookupError(f"no {kind.__name__} was opened for this service") from None
        assert isinstance(resource, kind)
        return resource


@dataclass
class Runtime:
    """In the synchronous fleet, `broker` and `outbox` are one `DirectCalls`: the same `publish()` and
    `transaction()`, delivering by HTTP calls instead of through RabbitMQ."""

    settings: ServiceSettings
    database: Database
    broker: Broker | DirectCalls
    outbox: Outbox | DirectCalls
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)
    resources: Resources = field(default_factory=Resources)

    @property
    def synchronous(self) -> bool:
        """The synchronous fleet: a request answers with the outcome, once every call it caused is done."""
        return self.settings.fleet_mode == "sync"
