"""Issue 16: the consumer's hardening fixes, each shown against the real broker and database.

How each test failed on f1f6df5, before the fixes (run there with only the handlers' SQL ported back to
SQLAlchemy):
1. unreadable x-attempt: `int(header)` raised outside the settling code, the deliveries stayed
   unacknowledged, the prefetch filled up and the valid message behind them was never handled;
2. refused forward: requeued at once, the handler ran again in a loop (21 times in a second, then the
   broker's delivery limit dead-lettered it without a reason);
3. retry tiers: B's 0.2 s per-message TTL waited behind A's 20 s at the head of the one `.retry` queue;
4. an OSError of the handler was taken for a database outage and deferred forever; a statement timeout
   was not, and spent the attempts until the message was dead-lettered;
5. raising after the commit: retried, so the handler ran a second time (and met a duplicate);
6. the lost ack: passed there too (a redelivery was already recognised as a duplicate), kept as a guard;
7. metric labels: the 50 publisher-chosen `type` values became 50 `messages_published_total` series.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from prometheus_client import REGISTRY

from common import metrics
from common.broker import Broker, encode_event
from common.consumer import DEAD_LETTER_REASON_HEADER, Consumer, MessageContext
from common.outbox import Outbox
from common.runtime import Runtime
from common.topology import DEFAULT_EXCHANGE, ConsumedQueue, declare_queue
from devtools.provision import credentials_of
from tests.integration.conftest import INSERT_PING, Ping, PublishPing, core_settings, ping_rows
from tests.support.infra import Infra
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.integration

StartConsumer = Callable[..., Any]


@pytest.fixture
async def start_consumer(runtime: Runtime, test_queue: ConsumedQueue) -> AsyncIterator[StartConsumer]:
    """Start a consumer of the test queue (on `runtime`, or on one with other settings); stopped afterwards."""
    started: list[Consumer[Ping]] = []

    async def start(handler, *, on: Runtime | None = None, prefetch_count: int | None = None) -> Consumer[Ping]:
        consumer = Consumer(test_queue, handler, on or runtime, prefetch_count=prefetch_count)
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop(grace_s=5)


def runtime_with(runtime: Runtime, infra: Infra, **overrides: object) -> Runtime:
    """The test run's database and broker, with other consumer settings."""
    settings = core_settings(infra, **overrides)
    return Runtime(
        settings=settings,
        database=runtime.database,
        broker=runtime.broker,
        outbox=Outbox(settings, runtime.database, runtime.broker),
    )


async def record_ping(event: Ping, ctx: MessageContext[Ping]) -> None:
    async with ctx.transaction() as unit:
        await unit.connection.execute(INSERT_PING, event_id=str(event.event_id), note=event.note)


async def time_out_in_the_database(ctx: MessageContext[Ping]) -> None:
    """A statement that outlives the statement timeout, inside the handler's transaction."""
    async with ctx.transaction() as unit:
        await unit.connection.raw.execute("SET LOCAL statement_timeout = '50ms'")
        await unit.connection.raw.execute("SELECT pg_sleep(1)")


async def publish_raw(
    broker: Broker,
    queue: ConsumedQueue,
    body: bytes,
    *,
    message_id: str,
    headers: dict[str, Any] | None = None,
    message_type: str | None = None,
) -> None:
    """Publish as any other client could, past the core's publisher (and its metrics), confirmed."""
    channel = await broker.open_channel(publisher_confirms=True)
    try:
        await channel.default_exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=headers,
                type=message_type,
            ),
            routing_key=queue.name,
            mandatory=True,
        )
    finally:
        await channel.close()


def consumed(queue: ConsumedQueue, outcome: str) -> float:
    return REGISTRY.get_sample_value("messages_consumed_total", {"queue": queue.name, "outcome": outcome}) or 0.0


async def _true(value: bool) -> bool:
    return value


async def dead_letters(management: Management, queue: ConsumedQueue) -> list[dict[str, Any]]:
    return await management.peek(queue.dead_letter_queue)


class QueueAdmin:
    """Declaring a queue as an operator would, through the management API."""

    def __init__(self, infra: Infra) -> None:
        self._vhost = quote(infra.vhost, safe="")
        self._client = httpx.AsyncClient(
            base_url=infra.management_url, auth=credentials_of(infra.rabbitmq_url), timeout=10.0
        )

    async def declare(self, name: str, arguments: dict[str, Any]) -> None:
        response = await self._client.put(
            f"/api/queues/{self._vhost}/{quote(name, safe='')}",
            json={"durable": True, "auto_delete": False, "arguments": arguments},
        )
        response.raise_for_status()

    async def bind(self, exchange: str, queue: str) -> None:
        response = await self._client.post(
            f"/api/bindings/{self._vhost}/e/{quote(exchange, safe='')}/q/{quote(queue, safe='')}",
            json={"routing_key": ""},
        )
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()


@pytest.fixture
async def queue_admin(infra: Infra) -> AsyncIterator[QueueAdmin]:
    client = QueueAdmin(infra)
    yield client
    await client.close()


# --- 1. x-attempt is input ----------------------------------------------------------------------

UNREADABLE_ATTEMPTS: tuple[object, ...] = ("not-a-number", -3, [1, 2], "2", 0)


async def test_an_unreadable_attempt_header_dead_letters_the_message_and_does_not_stall_the_consumer(
    start_consumer: StartConsumer,
    broker: Broker,
    publish_ping: PublishPing,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    management: Management,
) -> None:
    """More unreadable headers than the prefetch: had one left its delivery unsettled, the consumer
    would run out of prefetch and never reach the valid message behind them."""
    handled: list[str] = []

    async def record(event: Ping, ctx: MessageContext[Ping]) -> None:
        handled.append(event.note)
        await record_ping(event, ctx)

    await start_consumer(record)  # prefetch 10
    bad = [Ping(note=f"bad {index}") for index in range(30)]
    for index, ping in enumerate(bad):
        value = UNREADABLE_ATTEMPTS[index % len(UNREADABLE_ATTEMPTS)]
        await publish_raw(
            broker,
            test_queue,
            ping.model_dump_json().encode(),
            message_id=str(ping.event_id),
            headers={"x-attempt": value},
        )
    valid = await publish_ping("behind thirty unreadable headers")

    await eventually(lambda: ping_rows(runtime.database, valid.event_id), timeout=20, message="consumer stalled")

    async def all_dead() -> list[dict[str, Any]]:
        dead = await dead_letters(management, test_queue)
        return dead if len(dead) == len(bad) else []

    dead = await eventually(all_dead, timeout=20, message="the unreadable headers were not all dead-lettered")
    assert {message["properties"]["message_id"] for message in dead} == {str(ping.event_id) for ping in bad}
    for message in dead:
        reason = message["properties"]["headers"][DEAD_LETTER_REASON_HEADER]
        assert "x-attempt" in reason, reason
    assert handled == [valid.note], "a message with an unreadable attempt header reached the handler"
    assert await management.peek(test_queue.name) == []


# --- 2. A forward the broker refuses is held, not requeued at once --------------------------------


async def test_a_refused_forward_to_the_retry_queue_is_not_requeued_at_once_and_retried_later(
    start_consumer: StartConsumer,
    publish_ping: PublishPing,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    management: Management,
    queue_admin: QueueAdmin,
) -> None:
    """While the broker refuses the retry copy (the retry tiers' queues are gone: the copy is returned as
    unroutable), the delivery is held: its handler is not run again in a loop (towards the broker's
    delivery limit, which dead-letters without a reason). Once the retry queues are back, the retry
    goes through and the message is handled on its second attempt.

    Not a queue-full refusal (`max-length: 0`, `overflow: reject-publish`): a quorum queue's limit is
    soft, it takes a message while it is empty, and a retry queue's copies expire within its delay."""
    attempts: list[int] = []

    async def fails_once(event: Ping, ctx: MessageContext[Ping]) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("flaky downstream")
        await record_ping(event, ctx)

    await start_consumer(fails_once)
    retry_queues = {
        queue["name"]: queue["arguments"] for queue in await management.queues() if queue["name"].startswith("retry.")
    }
    assert retry_queues
    for name in retry_queues:
        await management.delete_queue(name)
    try:
        retried_before = consumed(test_queue, "retried")
        ping = await publish_ping("no retry queue to take it")
        await eventually(lambda: _true(len(attempts) >= 1), message="never handled")
        await stays(lambda: _true(len(attempts) == 1), duration=2.5, message="the handler ran again at once")
        assert consumed(test_queue, "retried") == retried_before, "the retry copy was taken"
        assert await dead_letters(management, test_queue) == []
    finally:
        for name, arguments in retry_queues.items():
            await queue_admin.declare(name, arguments)
            await queue_admin.bind(name, name)

    await eventually(lambda: ping_rows(runtime.database, ping.event_id), timeout=30, message="never retried")
    assert attempts == [1, 2]
    assert consumed(test_queue, "retried") == retried_before + 1
    assert await dead_letters(management, test_queue) == []
    assert await management.peek(test_queue.name) == []


# --- 3. One retry queue per delay -----------------------------------------------------------------


async def test_a_short_retry_does_not_wait_behind_a_long_one(
    start_consumer: StartConsumer,
    broker: Broker,
    runtime: Runtime,
    infra: Infra,
    test_queue: ConsumedQueue,
) -> None:
    """Back-offs of 0.2 s (after attempt 1) and 20 s (after attempt 2). A fails on attempt 2 and waits
    20 s; B, failing on attempt 1 after A, must be back after about 0.2 s, not behind A."""
    slow_tiers = runtime_with(runtime, infra, retry_base_delay_s=0.2, retry_backoff_factor=100, max_delivery_attempts=3)
    calls: dict[str, list[tuple[int, float]]] = {"A": [], "B": []}

    async def a_fails_b_fails_once(event: Ping, ctx: MessageContext[Ping]) -> None:
        calls[event.note].append((ctx.attempt, time.monotonic()))
        if event.note == "A" or ctx.attempt == 1:
            raise RuntimeError(f"{event.note} fails on attempt {ctx.attempt}")
        await record_ping(event, ctx)

    await start_consumer(a_fails_b_fails_once, on=slow_tiers)
    a, b = Ping(note="A"), Ping(note="B")
    retried_before = consumed(test_queue, "retried")
    # A arrives as its second attempt (the header a retry copy carries): it fails and waits 20 s.
    await publish_raw(
        broker, test_queue, a.model_dump_json().encode(), message_id=str(a.event_id), headers={"x-attempt": 2}
    )
    await eventually(
        lambda: _true(consumed(test_queue, "retried") == retried_before + 1), message="A was not sent to retry"
    )

    await publish_raw(broker, test_queue, b.model_dump_json().encode(), message_id=str(b.event_id))
    await eventually(lambda: ping_rows(runtime.database, b.event_id), timeout=12, message="B waited behind A")
    [(first, failed_at), (second, retried_at)] = calls["B"]
    assert (first, second) == (1, 2)
    assert retried_at - failed_at < 10, "B's 0.2 s back-off took half of A's 20 s"
    assert [attempt for attempt, _ in calls["A"]] == [2], "A came back before its 20 s back-off"


async def test_queues_that_share_a_retry_tier_each_get_their_own_messages_back(
    runtime: Runtime, broker: Broker, management: Management
) -> None:
    """One `retry.<delay>ms` tier holds the retries of every queue: each copy goes back, by its routing
    key, to the queue it failed in, and only there."""
    queues = [
        ConsumedQueue(f"coretest_tier_{name}_{secrets.token_hex(4)}", Ping, "coretest", DEFAULT_EXCHANGE, "test")
        for name in ("left", "right")
    ]
    channel = await broker.open_channel()
    for queue in queues:
        await declare_queue(channel, queue)
    await channel.close()
    handled: dict[str, list[tuple[str, int]]] = {queue.name: [] for queue in queues}

    def fails_once_for(queue: ConsumedQueue):
        async def handle(event: Ping, ctx: MessageContext[Ping]) -> None:
            handled[queue.name].append((event.note, ctx.attempt))
            if ctx.attempt == 1:
                raise RuntimeError("flaky downstream")

        return handle

    consumers = [Consumer(queue, fails_once_for(queue), runtime) for queue in queues]
    for consumer in consumers:
        await consumer.start()
    try:
        for queue in queues:
            for n in range(3):
                ping = Ping(note=f"{queue.name}-{n}")
                await broker.publish_message(encode_event(ping, app_id="coretest"), exchange="", routing_key=queue.name)

        def all_retried() -> bool:
            return all(len(calls) == 6 for calls in handled.values())

        await eventually(lambda: _true(all_retried()), timeout=15, message=f"not all retried: {handled}")
        for queue in queues:
            expected = {(f"{queue.name}-{n}", attempt) for n in range(3) for attempt in (1, 2)}
            assert set(handled[queue.name]) == expected, "a retry came back to another queue"
            assert await management.peek(queue.dead_letter_queue) == []
    finally:
        for consumer in consumers:
            await consumer.stop(grace_s=5)


# --- 4. What counts as a dependency failure -------------------------------------------------------


async def test_an_oserror_that_is_not_the_database_spends_attempts_and_is_dead_lettered(
    start_consumer: StartConsumer,
    publish_ping: PublishPing,
    test_queue: ConsumedQueue,
    management: Management,
) -> None:
    """Only the database being down or slow defers a message without using an attempt; an OSError of the
    handler's own (a missing file) is the message's failure, retried then dead-lettered."""
    attempts: list[int] = []

    async def reads_a_missing_template(event: Ping, ctx: MessageContext[Ping]) -> None:
        attempts.append(ctx.attempt)
        await asyncio.to_thread(Path(f"/nonexistent/templates/{event.note}.txt").read_text)

    await start_consumer(reads_a_missing_template)
    ping = await publish_ping("welcome")
    [dead] = await eventually(lambda: dead_letters(management, test_queue), timeout=15, message="never dead-lettered")
    assert attempts == [1, 2, 3]  # max_delivery_attempts = 3
    assert dead["properties"]["message_id"] == str(ping.event_id)
    reason = dead["properties"]["headers"][DEAD_LETTER_REASON_HEADER]
    assert "failed after 3 attempts" in reason, reason
    assert "FileNotFoundError" in reason, reason


async def test_a_statement_timeout_defers_without_using_attempts_until_the_database_is_fast_again(
    start_consumer: StartConsumer,
    publish_ping: PublishPing,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    management: Management,
) -> None:
    """The database too slow (its statement timeout) is not the message's fault: more timeouts than
    `max_delivery_attempts`, each retried as attempt 1, and the message handled once it stops."""
    attempts: list[int] = []

    async def slow_database_for_a_while(event: Ping, ctx: MessageContext[Ping]) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) <= 5:  # more timeouts than max_delivery_attempts
            await time_out_in_the_database(ctx)
        await record_ping(event, ctx)

    await start_consumer(slow_database_for_a_while)
    ping = await publish_ping("patience")
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), timeout=20, message="never handled")
    assert attempts == [1] * 6, attempts
    assert await ping_rows(runtime.database, ping.event_id) == 1
    assert await dead_letters(management, test_queue) == []


# --- 5. Raising after the commit ------------------------------------------------------------------


async def test_a_handler_raising_after_its_commit_is_acknowledged_once_and_not_retried(
    start_consumer: StartConsumer,
    publish_ping: PublishPing,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    management: Management,
) -> None:
    """Its effects stand: a retry would run the handler (and whatever it does besides its transaction)
    again for nothing, so the message is acknowledged, counted as `failed_after_commit`."""
    calls: list[int] = []

    async def fails_after_commit(event: Ping, ctx: MessageContext[Ping]) -> None:
        calls.append(ctx.attempt)
        await record_ping(event, ctx)
        raise RuntimeError("the notification after the commit failed")

    await start_consumer(fails_after_commit)
    ping = await publish_ping("committed, then raised")
    await eventually(lambda: ping_rows(runtime.database, ping.event_id), message="never committed")
    await stays(lambda: _true(len(calls) == 1), duration=1.5, message="the handler was run again")
    assert await ping_rows(runtime.database, ping.event_id) == 1
    assert consumed(test_queue, "failed_after_commit") == 1
    assert consumed(test_queue, "retried") == 0
    assert await management.peek(test_queue.name) == []
    assert await dead_letters(management, test_queue) == []


# --- 6. The ack lost ------------------------------------------------------------------------------


async def test_a_lost_ack_leads_to_a_redelivery_recognised_as_a_duplicate(
    runtime: Runtime,
    infra: Infra,
    test_queue: ConsumedQueue,
    publish_ping: PublishPing,
    management: Management,
) -> None:
    """The consumer's connection is closed by the broker after the handler committed and before its ack
    (aio-pika then cancels the delivery's task with its channel, or the ack raises): the broker redelivers
    after the reconnect, and the copy is found processed and acknowledged, its effect applied once.
    (Passed on f1f6df5 as well: a guard, not a fix.)"""
    settings = core_settings(
        infra, service_name=f"coretest-ack-{secrets.token_hex(3)}", broker_reconnect_interval_s=1.0
    )
    consumer_broker = Broker(settings)
    await consumer_broker.connect()
    consumer_runtime = Runtime(
        settings=settings,
        database=runtime.database,
        broker=consumer_broker,
        outbox=Outbox(settings, runtime.database, consumer_broker),
    )
    calls: list[str] = []

    async def commit_then_lose_the_connection(event: Ping, ctx: MessageContext[Ping]) -> None:
        calls.append(event.note)
        await record_ping(event, ctx)
        if len(calls) == 1:  # committed: now the broker drops the connection, before any ack can reach it
            assert await management.force_close(consumer_broker.connection_name) == 1
            await eventually(lambda: _true(not consumer_broker.is_connected), interval=0.01, message="still connected")

    consumer = Consumer(test_queue, commit_then_lose_the_connection, consumer_runtime)
    await consumer.start()
    try:
        ping = await publish_ping("acknowledged on the second delivery")
        await eventually(
            lambda: _true(consumed(test_queue, "duplicate") == 1),
            timeout=20,
            message="the redelivery was not acknowledged as a duplicate",
        )
        assert calls == [ping.note, ping.note]
        assert await ping_rows(runtime.database, ping.event_id) == 1
    finally:
        await consumer.stop(grace_s=5)
        await consumer_broker.close()
    # Stopped: anything still unacknowledged would be back in the queue now.
    assert await management.peek(test_queue.name) == []
    assert await dead_letters(management, test_queue) == []
    assert await ping_rows(runtime.database, ping.event_id) == 1


# --- 7. Bounded metric labels ---------------------------------------------------------------------


def _published_event_types() -> set[str]:
    return {
        sample.labels["event_type"]
        for family in metrics.MESSAGES_PUBLISHED.collect()
        for sample in family.samples
        if "event_type" in sample.labels
    }


def _published(event_type: str) -> float:
    """Confirmed publishes of `event_type` to any exchange (dead letters go to the default one, retry
    copies to their tier's)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "messages_published"
        for sample in family.samples
        if sample.name == "messages_published_total"
        and sample.labels["event_type"] == event_type
        and sample.labels["outcome"] == "confirmed"
    )


async def test_forwarded_copies_are_counted_under_the_queues_event_type_not_the_publishers(
    start_consumer: StartConsumer,
    broker: Broker,
    runtime: Runtime,
    test_queue: ConsumedQueue,
    management: Management,
) -> None:
    """50 publisher-chosen `type` properties (25 poison, dead-lettered; 25 retried once) must not become 50
    metric series: the copies the consumer forwards are all counted as the queue's own event type."""

    async def fails_once(event: Ping, ctx: MessageContext[Ping]) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("once")
        await record_ping(event, ctx)

    await start_consumer(fails_once)
    forwarded_before = _published("Ping")
    types = [f"Type{secrets.token_hex(6)}" for _ in range(50)]
    retried = [Ping(note=f"retried {index}") for index in range(25)]
    for index, message_type in enumerate(types[:25]):
        await publish_raw(broker, test_queue, b"{not json", message_id=f"poison-{index}", message_type=message_type)
    for ping, message_type in zip(retried, types[25:], strict=True):
        body = ping.model_dump_json().encode()
        await publish_raw(broker, test_queue, body, message_id=str(ping.event_id), message_type=message_type)

    async def all_dead() -> bool:
        return len(await dead_letters(management, test_queue)) == 25

    async def all_handled() -> bool:
        counts = await asyncio.gather(*(ping_rows(runtime.database, ping.event_id) for ping in retried))
        return all(count == 1 for count in counts)

    await eventually(all_dead, timeout=20, message="the poison was not dead-lettered")
    await eventually(all_handled, timeout=20, message="the retried messages were not handled")

    leaked = _published_event_types() & set(types)
    assert not leaked, f"{len(leaked)} publisher-chosen types became metric labels"
    assert _published("Ping") - forwarded_before == 50  # 25 dead letters and 25 retry copies
