"""The transactional outbox: events commit with their change, are delivered even after a crash, are
published by one path at a time, and rows that can never be published are parked, not retried forever."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from common import metrics
from common.database import Database, outbox_table
from common.events import ProductUpdated, UserRegistered, utc_now
from common.outbox import Outbox
from common.runtime import Runtime
from common.sql import Statement
from common.tasks import BackgroundTasks
from tests.integration.conftest import INSERT_PING
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.integration

QUEUE = "user_registered_queue"


async def outbox_rows(database: Database) -> int:
    table = outbox_table(database.metadata)
    return int(await database.fetchval(Statement(select(func.count()).select_from(table))))


async def delivered_ids(management: Management) -> list[str]:
    taken = await management.take(QUEUE, count=1000)
    return [message["properties"]["message_id"] for message in taken]


@pytest.fixture
def runtime(runtime: Runtime) -> Runtime:
    """The outbox as the user service runs it: the topology lists it as UserRegistered's publisher."""
    settings = runtime.settings.model_copy(update={"service_name": "userservice"})
    return Runtime(
        settings=settings,
        database=runtime.database,
        broker=runtime.broker,
        outbox=Outbox(settings, runtime.database, runtime.broker),
    )


@pytest.fixture(autouse=True)
async def empty_outbox_and_queue(runtime: Runtime, management: Management) -> None:
    await runtime.database.execute(Statement(outbox_table(runtime.database.metadata).delete()))
    await management.take(QUEUE, count=1000)


def registrations(count: int, prefix: str) -> list[UserRegistered]:
    return [UserRegistered(user_id=index + 1, email=f"{prefix}{index}@example.com") for index in range(count)]


async def test_a_service_cannot_publish_what_the_map_does_not_say_it_publishes(runtime: Runtime) -> None:
    with pytest.raises(LookupError, match="lists only"):
        async with runtime.outbox.transaction() as unit:
            unit.publish(ProductUpdated(product_id=1, name="x", stock=1, product_version=1, updated_at=utc_now()))
    assert await outbox_rows(runtime.database) == 0


async def test_event_is_published_right_after_commit(runtime: Runtime, management: Management) -> None:
    outbox = runtime.outbox
    outbox.start(runtime.tasks)
    try:
        event = UserRegistered(user_id=1, email="fast@example.com")
        async with outbox.transaction() as unit:
            unit.publish(event)
        # Well inside the claim: this was the dispatcher, not the relay.
        await eventually(lambda: outbox_rows_equal(runtime.database, 0), timeout=1.0, interval=0.02)
        assert await delivered_ids(management) == [str(event.event_id)]
    finally:
        await outbox.close()


async def outbox_rows_equal(database: Database, expected: int) -> bool:
    return await outbox_rows(database) == expected


async def test_rolled_back_transaction_publishes_nothing(runtime: Runtime, management: Management) -> None:
    outbox = runtime.outbox
    outbox.start(runtime.tasks)

    async def register_then_fail() -> None:
        async with outbox.transaction() as unit:
            await unit.connection.execute(INSERT_PING, event_id=str(uuid.uuid4()), note="never")
            unit.publish(UserRegistered(user_id=2, email="never@example.com"))
            raise RuntimeError("business rule failed")

    try:
        with pytest.raises(RuntimeError, match="business rule failed"):
            await register_then_fail()
    finally:
        await outbox.close()
    assert await outbox_rows(runtime.database) == 0
    assert await delivered_ids(management) == []


async def test_the_relay_leaves_a_claimed_row_to_its_dispatcher_until_the_claim_ends(
    runtime: Runtime, management: Management
) -> None:
    # A process that committed and then died before its dispatcher published: its rows stay claimed.
    crashed_tasks = BackgroundTasks()
    crashed = Outbox(runtime.settings, runtime.database, runtime.broker)
    crashed.start(crashed_tasks)
    await crashed_tasks.stop("outbox-dispatcher")
    events = registrations(3, "crash")
    async with crashed.transaction() as unit:
        for event in events:
            unit.publish(event)
    await crashed_tasks.close()
    assert await outbox_rows(runtime.database) == 3

    # The next process to start (or a replica) runs the relay: not while the claim may still be used.
    successor = Outbox(runtime.settings, runtime.database, runtime.broker)
    assert await successor.relay_once() == 0, "the relay took rows their dispatcher may be publishing"
    assert await delivered_ids(management) == []

    await asyncio.sleep(runtime.settings.outbox_dispatch_claim_s)
    assert await successor.relay_once() == 3
    assert sorted(await delivered_ids(management)) == sorted(str(event.event_id) for event in events)
    assert await outbox_rows(runtime.database) == 0


async def test_rows_written_while_no_dispatcher_runs_go_to_the_relay_at_once(
    runtime: Runtime, management: Management
) -> None:
    stopped = Outbox(runtime.settings, runtime.database, runtime.broker)  # never started, or closed already
    async with stopped.transaction() as unit:
        unit.publish(UserRegistered(user_id=9, email="unclaimed@example.com"))
    assert await stopped.relay_once() == 1
    assert len(await delivered_ids(management)) == 1


async def test_dispatcher_and_relay_together_publish_every_row_once(runtime: Runtime, management: Management) -> None:
    settings = runtime.settings.model_copy(update={"outbox_relay_interval_s": 0.01})
    outbox = Outbox(settings, runtime.database, runtime.broker)
    tasks = BackgroundTasks()
    outbox.start(tasks)
    events = registrations(300, "together")
    try:

        async def commit(event: UserRegistered) -> None:
            async with outbox.transaction() as unit:
                unit.publish(event)

        await asyncio.gather(*(commit(event) for event in events))
        await eventually(lambda: outbox_rows_equal(runtime.database, 0), timeout=10)
    finally:
        await outbox.close()
        await tasks.close()
    delivered = await delivered_ids(management)
    assert sorted(delivered) == sorted(str(event.event_id) for event in events), "an event went out twice or never"


async def test_close_publishes_what_was_committed_before_it(runtime: Runtime, management: Management) -> None:
    outbox = runtime.outbox
    outbox.start(runtime.tasks)
    events = registrations(20, "closing")
    for event in events:
        async with outbox.transaction() as unit:
            unit.publish(event)
    await outbox.close()  # at once: the dispatcher may not have published any of them yet
    assert await outbox_rows(runtime.database) == 0
    assert sorted(await delivered_ids(management)) == sorted(str(event.event_id) for event in events)


async def test_rows_the_dispatcher_reaches_too_late_are_handed_to_the_relay_before_their_claim_ends(
    runtime: Runtime, management: Management
) -> None:
    # A dispatcher held up (behind a slow broker, say) must not start a publish the relay could overlap;
    # the rows it skips go to the relay at once instead of when their claim runs out.
    settings = runtime.settings.model_copy(update={"publish_timeout_s": 4.5, "outbox_dispatch_claim_s": 7.0})
    outbox = Outbox(settings, runtime.database, runtime.broker)
    tasks = BackgroundTasks()
    outbox.start(tasks)
    await tasks.stop("outbox-dispatcher")
    await tasks.stop("outbox-relay")
    events = registrations(3, "late")
    try:
        for event in events:
            async with outbox.transaction() as unit:
                unit.publish(event)
        committed = asyncio.get_running_loop().time()
        assert await outbox.relay_once() == 0, "claimed rows went to the relay"
        # Past the last moment to start a publish (claim - publish timeout - margin = 1.5 s), well before 7 s.
        await asyncio.sleep(2.0)
        tasks.start("outbox-dispatcher", outbox._dispatch_forever)  # the held-up dispatcher goes on
        await eventually(lambda: relays(outbox, 3), timeout=3, interval=0.1)
        assert asyncio.get_running_loop().time() - committed < settings.outbox_dispatch_claim_s
    finally:
        await tasks.close()
    assert sorted(await delivered_ids(management)) == sorted(str(event.event_id) for event in events)
    assert await outbox_rows(runtime.database) == 0


async def relays(outbox: Outbox, count: int) -> bool:
    return await outbox.relay_once() == count


async def test_beyond_the_dispatcher_queue_rows_go_to_the_relay(runtime: Runtime, management: Management) -> None:
    settings = runtime.settings.model_copy(update={"outbox_dispatch_queue_size": 2})
    outbox = Outbox(settings, runtime.database, runtime.broker)
    tasks = BackgroundTasks()
    outbox.start(tasks)
    await tasks.stop("outbox-dispatcher")  # nothing drains the queue: it stays full once filled
    await tasks.stop("outbox-relay")
    events = registrations(5, "overflow")
    try:
        for event in events:
            async with outbox.transaction() as unit:
                unit.publish(event)
        # Two rows wait in memory (claimed); the other three were written for the relay.
        assert await outbox.relay_once() == 3
    finally:
        await tasks.close()
    assert len(await delivered_ids(management)) == 3
    assert await outbox_rows(runtime.database) == 2


async def test_rows_that_can_never_be_published_are_parked_and_hold_nothing_up(
    runtime: Runtime, management: Management
) -> None:
    settings = runtime.settings.model_copy(update={"outbox_relay_batch_size": 2})
    outbox = Outbox(settings, runtime.database, runtime.broker)
    table = outbox_table(runtime.database.metadata)
    bad = [
        {"exchange": "no_such_exchange", "routing_key": ""},  # not in the topology
        {"exchange": "", "routing_key": "no_such_queue"},  # returned by the broker as unroutable
    ]
    parked_before = {
        kind: metrics.OUTBOX_ROWS_PARKED.labels(kind=kind)._value.get() for kind in ("unroutable", "unknown_exchange")
    }
    async with runtime.database.transaction() as connection:
        for row in bad:
            event = UserRegistered(user_id=1, email="bad@example.com")
            await connection.raw.execute(
                f"INSERT INTO {table.fullname} (event_id, event_type, exchange, routing_key, correlation_id, payload)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                str(event.event_id),
                event.event_type,
                row["exchange"],
                row["routing_key"],
                event.correlation_id,
                event.model_dump_json(),
            )
    good = registrations(3, "behind")
    async with outbox.transaction() as unit:
        for event in good:
            unit.publish(event)

    # The bad rows come first and fill a whole batch; the good ones must still get out.
    for _ in range(4):
        await outbox.relay_once()
    assert sorted(await delivered_ids(management)) == sorted(str(event.event_id) for event in good)
    backlog = await outbox.backlog()
    assert (backlog.pending, backlog.parked) == (0, 2)
    reasons = await runtime.database.fetch(
        Statement(select(table.c.parked_reason).where(table.c.parked_reason.is_not(None)).order_by(table.c.id))
    )
    assert reasons[0][0].startswith("unknown_exchange: ")
    assert reasons[1][0].startswith("unroutable: ")
    assert (
        metrics.OUTBOX_ROWS_PARKED.labels(kind="unknown_exchange")._value.get() == parked_before["unknown_exchange"] + 1
    )
    assert metrics.OUTBOX_ROWS_PARKED.labels(kind="unroutable")._value.get() == parked_before["unroutable"] + 1
    # Parked for good: later sweeps leave them alone.
    await stays(lambda: _relays_nothing(outbox), duration=0.5, message="a parked row was published")


async def _relays_nothing(outbox: Outbox) -> bool:
    return await outbox.relay_once() == 0
