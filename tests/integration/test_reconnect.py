"""After the broker drops a service's connection, it reconnects and its consumers resume by themselves."""

from __future__ import annotations

import asyncio

import pytest

from common.broker import Broker
from common.consumer import Consumer, MessageContext
from common.runtime import Runtime
from common.settings import ServiceSettings
from common.topology import ConsumedQueue
from tests.integration.conftest import INSERT_PING, Ping, PublishPing, ping_rows
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_consumer_resumes_after_its_connection_is_closed_by_force(
    settings: ServiceSettings,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    publish_ping: PublishPing,
    management: Management,
) -> None:
    consumer_settings = settings.model_copy(update={"service_name": "coretest-consumer"})
    consumer_broker = Broker(consumer_settings)
    await consumer_broker.connect()
    consumer_runtime = Runtime(
        settings=consumer_settings, database=runtime.database, broker=consumer_broker, outbox=runtime.outbox
    )

    async def record(event: Ping, ctx: MessageContext[Ping]) -> None:
        async with ctx.transaction() as unit:
            await unit.connection.execute(INSERT_PING, event_id=str(event.event_id), note=event.note)

    consumer = Consumer(test_queue, record, consumer_runtime)
    await consumer.start()
    try:
        before = await publish_ping("before")
        await eventually(lambda: ping_rows(runtime.database, before.event_id))

        [old_connection] = await eventually(lambda: management.connections_named(consumer_broker.connection_name))
        assert await management.force_close(consumer_broker.connection_name) == 1
        after = [await publish_ping(f"after {index}") for index in range(5)]

        async def reconnected() -> bool:
            connections = await management.connections_named(consumer_broker.connection_name)
            return [c["name"] for c in connections] not in ([], [old_connection["name"]])

        await eventually(reconnected, timeout=15, message="the service did not open a new connection")
        await eventually(lambda: _is_true(consumer_broker.is_connected), timeout=15, message="no reconnect")

        async def all_handled() -> bool:
            counts = await asyncio.gather(*(ping_rows(runtime.database, ping.event_id) for ping in after))
            return all(count == 1 for count in counts)

        await eventually(all_handled, timeout=20, message="the consumer did not resume")
        queue = await eventually(lambda: _with_consumer(management, test_queue.name), timeout=10)
        assert queue["consumers"] == 1
    finally:
        await consumer.stop(grace_s=5)
        await consumer_broker.close()


async def _is_true(value: bool) -> bool:
    return value


async def _with_consumer(management: Management, queue: str) -> dict | None:
    details = await management.queue(queue)
    return details if details.get("consumers") == 1 else None
