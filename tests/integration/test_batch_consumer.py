"""The batching consumer: one transaction per batch, with every guarantee the one-message consumer gives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import aio_pika
import pytest

from common.consumer import DEAD_LETTER_REASON_HEADER, BatchConsumer, BatchContext, Batched
from common.runtime import Runtime
from common.topology import ConsumedQueue
from tests.integration.conftest import INSERT_PING, Ping, PublishPing, ping_rows
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.integration


@pytest.fixture
async def start_batches(runtime: Runtime, test_queue: ConsumedQueue) -> AsyncIterator[Callable[..., object]]:
    started: list[BatchConsumer[Ping]] = []

    async def start(handler, *, max_size: int = 20, max_wait_s: float = 0.2) -> BatchConsumer[Ping]:
        consumer = BatchConsumer(test_queue, Batched(handler, max_size=max_size, max_wait_s=max_wait_s), runtime)
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop(grace_s=5)


class Recorder:
    """A batch handler that records every batch it is called with, and every batch whose transaction
    body ran (the ones it applied)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.applied: list[list[str]] = []
        self._fail_on = fail_on

    async def __call__(self, events: Sequence[Ping], ctx: BatchContext[Ping]) -> None:
        self.batches.append([event.note for event in events])
        if self._fail_on is not None and any(event.note == self._fail_on for event in events):
            raise RuntimeError(f"cannot handle {self._fail_on!r}")
        async with ctx.transaction() as unit:
            self.applied.append([event.note for event in events])
            await unit.connection.executemany(
                INSERT_PING, [{"event_id": str(event.event_id), "note": event.note} for event in events]
            )


async def record_pings(events: Sequence[Ping], ctx: BatchContext[Ping]) -> None:
    async with ctx.transaction() as unit:
        await unit.connection.executemany(
            INSERT_PING, [{"event_id": str(event.event_id), "note": event.note} for event in events]
        )


async def all_recorded_once(runtime: Runtime, pings: Sequence[Ping]) -> bool:
    counts = await asyncio.gather(*(ping_rows(runtime.database, ping.event_id) for ping in pings))
    return all(count == 1 for count in counts)


async def test_deliveries_are_handled_in_batches_each_applied_once(
    start_batches, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    recorder = Recorder()
    # Published before the consumer starts, so a full prefetch is waiting for it.
    pings = await asyncio.gather(*(publish_ping(f"batch {index}") for index in range(60)))
    await start_batches(recorder, max_size=20)

    await eventually(lambda: all_recorded_once(runtime, pings), message="not every ping was recorded once")
    assert sum(len(batch) for batch in recorder.batches) == 60
    assert max(len(batch) for batch in recorder.batches) == 20, recorder.batches
    assert len(recorder.batches) < 60 / 2, "the deliveries were not batched"
    assert await management.peek(test_queue.name) == []


async def test_a_lone_message_waits_at_most_max_wait(
    start_batches, publish_ping: PublishPing, runtime: Runtime
) -> None:
    recorder = Recorder()
    await start_batches(recorder, max_size=100, max_wait_s=0.3)
    ping = await publish_ping("alone")
    started = asyncio.get_running_loop().time()
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), timeout=5, interval=0.02)
    assert asyncio.get_running_loop().time() - started < 3.0
    assert recorder.batches == [["alone"]]


async def test_duplicates_in_and_across_batches_are_applied_once(
    start_batches, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    recorder = Recorder()
    twice = Ping(note="twice")
    others = [Ping(note=f"other {index}") for index in range(10)]
    for ping in [twice, *others, twice, twice]:  # copies inside one batch
        await publish_ping(event=ping)
    await start_batches(recorder, max_size=50)
    await eventually(lambda: all_recorded_once(runtime, [twice, *others]))

    await publish_ping(event=twice)  # a late redelivery, in a batch of its own

    async def queue_drained() -> bool:
        return await management.peek(test_queue.name) == []

    await eventually(queue_drained, message="duplicates left in the queue")
    await stays(lambda: all_recorded_once(runtime, [twice, *others]), duration=1.0, message="a duplicate was applied")
    assert sum(batch.count("twice") for batch in recorder.applied) == 1, recorder.applied


async def test_two_replicas_with_duplicates_apply_each_event_once(
    start_batches, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    pings = [Ping(note=f"shared {index}") for index in range(40)]
    await start_batches(record_pings, max_size=10, max_wait_s=0.05)
    await start_batches(record_pings, max_size=10, max_wait_s=0.05)
    # Every event three times, interleaved, so copies land in both replicas' batches at once.
    await asyncio.gather(*(publish_ping(event=ping) for _ in range(3) for ping in pings))

    await eventually(lambda: all_recorded_once(runtime, pings), timeout=20)

    async def queue_drained() -> bool:
        return await management.peek(test_queue.name) == []

    await eventually(queue_drained, message="messages left in the queue")
    await stays(lambda: all_recorded_once(runtime, pings), duration=1.0, message="a duplicate was applied")
    assert await management.peek(test_queue.dead_letter_queue) == []


async def test_a_failing_message_is_isolated_from_its_batch(
    start_batches, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    recorder = Recorder(fail_on="bad")
    good = [Ping(note=f"good {index}") for index in range(8)]
    bad = Ping(note="bad")
    for ping in [*good[:4], bad, *good[4:]]:
        await publish_ping(event=ping)
    await start_batches(recorder, max_size=20)

    await eventually(lambda: all_recorded_once(runtime, good), message="the good messages were held back")
    [dead] = await eventually(lambda: management.peek(test_queue.dead_letter_queue), timeout=10)
    assert dead["properties"]["message_id"] == str(bad.event_id)
    assert "failed after 3 attempts" in dead["properties"]["headers"][DEAD_LETTER_REASON_HEADER]
    assert await ping_rows(runtime.database, bad.event_id) == 0
    # The batch, then each message alone; the bad one alone on each of its three attempts.
    assert sum(batch == ["bad"] for batch in recorder.batches) == 3, recorder.batches


async def test_poison_in_a_batch_is_dead_lettered_alone(
    start_batches,
    broker,
    publish_ping: PublishPing,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    management: Management,
) -> None:
    good = [Ping(note=f"fine {index}") for index in range(5)]
    for ping in good[:2]:
        await publish_ping(event=ping)
    channel = await broker.open_channel()
    await channel.default_exchange.publish(
        aio_pika.Message(b"{not json", message_id="poison", content_type="application/json", delivery_mode=2),
        routing_key=test_queue.name,
        mandatory=True,
    )
    await channel.close()
    for ping in good[2:]:
        await publish_ping(event=ping)
    await start_batches(record_pings)

    await eventually(lambda: all_recorded_once(runtime, good))
    [dead] = await eventually(lambda: management.peek(test_queue.dead_letter_queue), timeout=5)
    assert dead["properties"]["message_id"] == "poison"
    assert "not a valid Ping" in dead["properties"]["headers"][DEAD_LETTER_REASON_HEADER]


async def test_graceful_stop_flushes_the_buffered_batch(
    runtime: Runtime, publish_ping: PublishPing, test_queue: ConsumedQueue, management: Management
) -> None:
    consumer = BatchConsumer(test_queue, Batched(record_pings, max_size=100, max_wait_s=2.0), runtime)
    await consumer.start()
    pings = [await publish_ping(f"buffered {index}") for index in range(3)]
    await asyncio.sleep(0.3)  # delivered and buffered, but the batch is still filling
    await consumer.stop(grace_s=5)

    assert await all_recorded_once(runtime, pings)
    assert await management.peek(test_queue.name) == []
