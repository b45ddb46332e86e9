"""Publishing events into the fleet as their own publishers would, for tests that inject them."""

from __future__ import annotations

from common.broker import Broker, encode_event
from common.events import Event
from common.topology import route_for


class Impersonator:
    """Publishes any event along its route, as the service the map names as its publisher would
    (tests inject stale, duplicate or out-of-order events this way)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def publish(self, event: Event) -> None:
        route = route_for(event)
        message = encode_event(event, app_id="e2e-impersonator")
        await self._broker.publish_message(message, exchange=route.exchange.name, routing_key=route.routing_key)
