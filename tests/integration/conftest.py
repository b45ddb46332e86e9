"""The messaging core against the real broker and database of this test run (no mocks)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Literal

import pytest
from sqlalchemy import Column, MetaData, Table, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import UUID

from common.broker import Broker, encode_event
from common.database import Database, service_metadata
from common.events import Event
from common.outbox import Outbox
from common.runtime import Runtime
from common.settings import ServiceSettings
from common.sql import Statement
from common.topology import DEFAULT_EXCHANGE, ConsumedQueue, declare_queue
from tests.support.infra import Infra

pytestmark = pytest.mark.integration


class Ping(Event):
    """A test-only event."""

    event_type: Literal["Ping"] = "Ping"
    note: str


METADATA: MetaData = service_metadata("coretest")
PINGS = Table(
    "pings",
    METADATA,
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("note", Text, nullable=False),
)
INSERT_PING = Statement(PINGS.insert().values(event_id=bindparam("event_id"), note=bindparam("note")))
COUNT_PINGS = Statement(select(func.count()).select_from(PINGS).where(PINGS.c.event_id == bindparam("event_id")))


def core_settings(infra: Infra, **overrides: object) -> ServiceSettings:
    values: dict[str, object] = {
        "service_name": "coretest",
        "rabbitmq_url": infra.rabbitmq_url,
        "database_url": infra.database_url,
        "retry_base_delay_s": 0.2,
        "retry_backoff_factor": 2.0,
        "max_delivery_attempts": 3,
        "dependency_retry_delay_s": 0.2,
        "publish_timeout_s": 1.0,
        "outbox_dispatch_claim_s": 2.5,
        "shutdown_grace_s": 5.0,
        "prefetch_count": 10,
    }
    values.update(overrides)
    return ServiceSettings.model_validate(values)


@pytest.fixture(scope="session")
def settings(infra: Infra) -> ServiceSettings:
    return core_settings(infra)


@pytest.fixture(scope="session")
async def database(settings: ServiceSettings) -> AsyncIterator[Database]:
    db = Database(settings, METADATA)
    await db.create_tables()
    await db.open()
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
async def broker(settings: ServiceSettings) -> AsyncIterator[Broker]:
    connected = Broker(settings)
    await connected.connect()
    yield connected
    await connected.close()


@pytest.fixture
async def runtime(settings: ServiceSettings, database: Database, broker: Broker) -> Runtime:
    return Runtime(settings=settings, database=database, broker=broker, outbox=Outbox(settings, database, broker))


@pytest.fixture
async def test_queue(broker: Broker) -> ConsumedQueue:
    """A fresh queue (with its retry and dead-letter companions) that carries `Ping`."""
    queue = ConsumedQueue(f"coretest_{uuid.uuid4().hex[:10]}", Ping, "coretest", DEFAULT_EXCHANGE, "test queue")
    channel = await broker.open_channel()
    await declare_queue(channel, queue)
    await channel.close()
    return queue


PublishPing = Callable[..., Awaitable[Ping]]


@pytest.fixture
def publish_ping(broker: Broker, test_queue: ConsumedQueue) -> PublishPing:
    async def publish(note: str = "hello", event: Ping | None = None) -> Ping:
        ping = event or Ping(note=note)
        await broker.publish_message(encode_event(ping, app_id="coretest"), exchange="", routing_key=test_queue.name)
        return ping

    return publish


async def ping_rows(database: Database, event_id: uuid.UUID) -> int:
    return int(await database.fetchval(COUNT_PINGS, event_id=str(event_id)))


@pytest.fixture
def root_logging() -> Iterator[None]:
    """A service built in process configures the process's logging, as it should; put the test run's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
