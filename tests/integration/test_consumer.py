"""The base consumer: ack after commit, retries with back-off, dead-lettering, idempotency, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aio_pika
import asyncpg
import pytest
from sqlalchemy import bindparam, func, select, text

from common.consumer import DEAD_LETTER_REASON_HEADER, CheckProcessedFirst, Consumer, MessageContext, Reject
from common.database import processed_events_table
from common.runtime import Runtime
from common.sql import Statement
from common.topology import ConsumedQueue, retry_tier
from tests.integration.conftest import INSERT_PING, Ping, PublishPing, ping_rows
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.integration


@pytest.fixture
async def start_consumer(runtime: Runtime, test_queue: ConsumedQueue) -> AsyncIterator[Callable[..., object]]:
    started: list[Consumer[Ping]] = []

    async def start(handler, *, prefetch_count: int | None = None) -> Consumer[Ping]:
        consumer = Consumer(test_queue, handler, runtime, prefetch_count=prefetch_count)
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop(grace_s=5)


async def record_ping(event: Ping, ctx: MessageContext[Ping]) -> None:
    async with ctx.transaction() as unit:
        await unit.connection.execute(INSERT_PING, event_id=str(event.event_id), note=event.note)


async def dead_letters(management: Management, queue: ConsumedQueue) -> list[dict]:
    return await management.peek(queue.dead_letter_queue)


async def test_handled_message_is_committed_then_acknowledged(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    await start_consumer(record_ping)
    ping = await publish_ping("handled")
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), message="ping not recorded")
    assert await management.peek(test_queue.name) == []
    assert await dead_letters(management, test_queue) == []


async def test_failing_handler_is_retried_with_growing_delay_then_dead_lettered(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    attempts: list[tuple[int, float]] = []

    async def always_fails(event: Ping, ctx: MessageContext[Ping]) -> None:
        attempts.append((ctx.attempt, time.monotonic()))
        raise RuntimeError("the mail server said no")

    await start_consumer(always_fails)
    ping = await publish_ping("doomed")

    [dead] = await eventually(lambda: dead_letters(management, test_queue), message="never dead-lettered")
    assert [attempt for attempt, _ in attempts] == [1, 2, 3]  # max_delivery_attempts = 3
    first_gap = attempts[1][1] - attempts[0][1]
    second_gap = attempts[2][1] - attempts[1][1]
    assert first_gap >= 0.2 * 0.9, first_gap  # retry_base_delay_s
    assert second_gap >= 0.4 * 0.9, second_gap  # x retry_backoff_factor
    assert second_gap > first_gap

    headers = dead["properties"]["headers"]
    assert dead["properties"]["message_id"] == str(ping.event_id)
    assert "failed after 3 attempts" in headers[DEAD_LETTER_REASON_HEADER]
    assert "the mail server said no" in headers[DEAD_LETTER_REASON_HEADER]
    assert headers["x-original-queue"] == test_queue.name
    assert await ping_rows(runtime.database, ping.event_id) == 0
    await stays(lambda: _no_more_attempts(attempts, 3), duration=1.0, message="retried past the limit")


async def _no_more_attempts(attempts: list, expected: int) -> bool:
    return len(attempts) == expected


async def test_transient_failure_succeeds_on_retry(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    async def fails_once(event: Ping, ctx: MessageContext[Ping]) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("flaky downstream")
        await record_ping(event, ctx)

    await start_consumer(fails_once)
    ping = await publish_ping("second time lucky")
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), message="not recorded after retry")
    assert await ping_rows(runtime.database, ping.event_id) == 1
    assert await dead_letters(management, test_queue) == []


async def test_poison_messages_are_dead_lettered_at_once_with_their_reason(
    start_consumer, broker, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    calls: list[Ping] = []

    async def should_not_run(event: Ping, ctx: MessageContext[Ping]) -> None:
        calls.append(event)

    await start_consumer(should_not_run)
    channel = await broker.open_channel()
    poison = {
        "not-json": b"{this is not json",
        "missing-field": b'{"event_type": "Ping"}',
        "wrong-type": b'{"event_type": "UserRegistered", "note": "x"}',
        "future-version": b'{"event_type": "Ping", "note": "x", "version": 99}',
    }
    for message_id, body in poison.items():
        await channel.default_exchange.publish(
            aio_pika.Message(body, message_id=message_id, content_type="application/json", delivery_mode=2),
            routing_key=test_queue.name,
            mandatory=True,
        )
    await channel.default_exchange.publish(
        aio_pika.Message(b"<xml/>", message_id="xml", content_type="application/xml", delivery_mode=2),
        routing_key=test_queue.name,
        mandatory=True,
    )
    await channel.close()

    async def all_dead() -> list[dict]:
        dead = await dead_letters(management, test_queue)
        return dead if len(dead) == len(poison) + 1 else []

    dead = await eventually(all_dead, timeout=5, message="poison not dead-lettered at once")
    reasons = {m["properties"]["message_id"]: m["properties"]["headers"][DEAD_LETTER_REASON_HEADER] for m in dead}
    assert "not a valid Ping" in reasons["not-json"]
    assert "note" in reasons["missing-field"]
    assert "event_type" in reasons["wrong-type"]
    assert "version 99" in reasons["future-version"]
    assert "content type" in reasons["xml"]
    assert calls == []
    assert all(m["properties"]["headers"].get("x-attempt") is None for m in dead), "poison must not be retried"


async def test_handler_can_reject_a_message_it_can_never_process(
    start_consumer, publish_ping: PublishPing, test_queue: ConsumedQueue, management: Management
) -> None:
    attempts: list[int] = []

    async def rejects(event: Ping, ctx: MessageContext[Ping]) -> None:
        attempts.append(ctx.attempt)
        raise Reject("product 42 does not exist")

    await start_consumer(rejects)
    await publish_ping("unknown product")
    [dead] = await eventually(lambda: dead_letters(management, test_queue))
    assert "product 42 does not exist" in dead["properties"]["headers"][DEAD_LETTER_REASON_HEADER]
    assert attempts == [1]


async def test_duplicate_deliveries_are_applied_once(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    handled: list[int] = []

    async def slow_record(event: Ping, ctx: MessageContext[Ping]) -> None:
        handled.append(1)
        await asyncio.sleep(0.05)  # widen the window in which concurrent copies overlap
        await record_ping(event, ctx)

    await start_consumer(slow_record, prefetch_count=10)
    ping = Ping(note="say it twice")
    await asyncio.gather(*(publish_ping(event=ping) for _ in range(5)))  # concurrent copies
    await eventually(lambda: ping_rows(runtime.database, ping.event_id))
    await publish_ping(event=ping)  # a late redelivery

    async def queue_drained() -> bool:
        return await management.peek(test_queue.name) == []

    await eventually(queue_drained, message="duplicates left in the queue")
    await stays(lambda: _rows_equal(runtime, ping, 1), duration=1.0, message="a duplicate was applied")
    assert await dead_letters(management, test_queue) == []


async def _redeliver_after_handling(
    publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management, ping: Ping
) -> None:
    await publish_ping(event=ping)
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), message="ping not recorded")
    await publish_ping(event=ping)  # the same event again, once the first copy was handled

    async def queue_drained() -> bool:
        return await management.peek(test_queue.name) == []

    await eventually(queue_drained, message="the duplicate was left in the queue")


async def test_a_known_duplicate_does_not_reach_a_handler_subscribed_to_check_first(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    """Handlers that work before their transaction (an email sent) are spared known duplicates."""
    calls: list[str] = []

    async def send_then_record(event: Ping, ctx: MessageContext[Ping]) -> None:
        calls.append(event.note)  # stands in for the email sent before the transaction
        await record_ping(event, ctx)

    await start_consumer(CheckProcessedFirst(send_then_record))
    ping = Ping(note="once only")
    await _redeliver_after_handling(publish_ping, runtime, test_queue, management, ping)
    await stays(lambda: _rows_equal(runtime, ping, 1), duration=0.5, message="the duplicate was applied")
    assert calls == ["once only"], "the known duplicate reached the handler"


async def test_other_handlers_meet_a_known_duplicate_in_their_transaction_which_changes_nothing(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    """No look-up first (one database round trip saved per message): the duplicate reaches the
    handler, whose transaction recognises it before its body runs."""
    calls: list[str] = []
    bodies_run: list[str] = []

    async def record(event: Ping, ctx: MessageContext[Ping]) -> None:
        calls.append(event.note)
        async with ctx.transaction() as unit:
            bodies_run.append(event.note)
            await unit.connection.execute(INSERT_PING, event_id=str(event.event_id), note=event.note)

    await start_consumer(record)
    ping = Ping(note="recorded once")
    await _redeliver_after_handling(publish_ping, runtime, test_queue, management, ping)
    await stays(lambda: _rows_equal(runtime, ping, 1), duration=0.5, message="the duplicate was applied")
    assert calls == ["recorded once", "recorded once"], "the duplicate should have reached the handler"
    assert bodies_run == ["recorded once"]
    assert await dead_letters(management, test_queue) == []


async def _rows_equal(runtime: Runtime, ping: Ping, expected: int) -> bool:
    return await ping_rows(runtime.database, ping.event_id) == expected


async def test_prefetch_bounds_concurrent_handlers(start_consumer, publish_ping: PublishPing, runtime: Runtime) -> None:
    running = 0
    peak = 0

    async def tracked(event: Ping, ctx: MessageContext[Ping]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1
        await record_ping(event, ctx)

    await start_consumer(tracked, prefetch_count=3)
    pings = await asyncio.gather(*(publish_ping(f"n{i}") for i in range(12)))

    async def all_recorded() -> bool:
        counts = await asyncio.gather(*(ping_rows(runtime.database, p.event_id) for p in pings))
        return all(count == 1 for count in counts)

    await eventually(all_recorded)
    assert peak == 3


async def test_graceful_stop_finishes_in_flight_messages(
    runtime: Runtime, publish_ping: PublishPing, test_queue: ConsumedQueue, management: Management
) -> None:
    started = asyncio.Event()

    async def slow(event: Ping, ctx: MessageContext[Ping]) -> None:
        started.set()
        await asyncio.sleep(0.5)
        await record_ping(event, ctx)

    consumer = Consumer(test_queue, slow, runtime)
    await consumer.start()
    ping = await publish_ping("in flight at shutdown")
    await asyncio.wait_for(started.wait(), timeout=5)
    await consumer.stop(grace_s=5)

    assert await ping_rows(runtime.database, ping.event_id) == 1
    assert await management.peek(test_queue.name) == [], "the finished message must have been acknowledged"


async def test_database_outage_defers_without_using_attempts(
    start_consumer, publish_ping: PublishPing, runtime: Runtime, test_queue: ConsumedQueue, management: Management
) -> None:
    """A dependency failure is not the message's fault: it waits and retries, never dead-letters."""
    failures = 0

    async def database_down_for_a_while(event: Ping, ctx: MessageContext[Ping]) -> None:
        nonlocal failures
        if failures < 5:  # more failures than max_delivery_attempts
            failures += 1
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        await record_ping(event, ctx)

    await start_consumer(database_down_for_a_while)
    ping = await publish_ping("patience")
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), timeout=10)
    assert failures == 5
    assert await dead_letters(management, test_queue) == []


async def test_a_handler_outliving_the_grace_period_is_cut_off_and_its_message_requeued_once(
    runtime: Runtime, publish_ping: PublishPing, test_queue: ConsumedQueue, management: Management
) -> None:
    """Closing the channel cancels the handler (aio-pika does), so it cannot forward a retry copy of a
    message the broker has already requeued: after shutdown the message is back in its queue, once."""
    started, release = asyncio.Event(), asyncio.Event()
    outcomes: list[str] = []

    async def outlives_the_grace_period(event: Ping, ctx: MessageContext[Ping]) -> None:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise
        raise RuntimeError("failed after the grace period")

    consumer = Consumer(test_queue, outlives_the_grace_period, runtime)
    await consumer.start()
    ping = await publish_ping("outlives its channel")
    await asyncio.wait_for(started.wait(), timeout=5)
    await consumer.stop(grace_s=0.1)
    release.set()
    await asyncio.sleep(1.0)  # a forwarded retry copy would be back from `.retry` by now

    assert outcomes == ["cancelled"]
    assert [message["properties"]["message_id"] for message in await management.peek(test_queue.name)] == [
        str(ping.event_id)
    ]
    assert await management.peek(retry_tier(runtime.settings.retry_base_delay_s)) == []


async def test_idempotency_records_are_pruned_after_the_retention_period(
    start_consumer, publish_ping: PublishPing, runtime: Runtime
) -> None:
    await start_consumer(record_ping)
    old, recent = await publish_ping("old"), await publish_ping("recent")
    await eventually(lambda: ping_rows(runtime.database, recent.event_id))
    await eventually(lambda: ping_rows(runtime.database, old.event_id))
    processed = processed_events_table(runtime.database.metadata)
    await runtime.database.execute(
        Statement(
            processed.update()
            .where(processed.c.event_id == bindparam("event_id"))
            .values(processed_at=func.now() - text("interval '8 days'"))
        ),
        event_id=str(old.event_id),
    )

    assert await runtime.database.prune_processed_events(older_than_s=7 * 24 * 3600) == 1

    left = {row[0] for row in await runtime.database.fetch(Statement(select(processed.c.event_id)))}
    assert str(old.event_id) not in left
    assert str(recent.event_id) in left
