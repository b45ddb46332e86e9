"""The transactional outbox: events commit with their change and are delivered even after a crash."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from common.database import Database, outbox_table
from common.events import ProductUpdated, UserRegistered, utc_now
from common.outbox import Outbox
from common.runtime import Runtime
from tests.integration.conftest import PINGS
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def outbox_rows(database: Database) -> int:
    table = outbox_table(database.metadata)
    async with database.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)))


async def delivered_ids(management: Management) -> set[str]:
    taken = await management.take("user_registered_queue", count=1000)
    return {message["properties"]["message_id"] for message in taken}


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


async def test_a_service_cannot_publish_what_the_map_does_not_say_it_publishes(runtime: Runtime) -> None:
    with pytest.raises(LookupError, match="lists only"):
        async with runtime.outbox.transaction() as unit:
            unit.publish(ProductUpdated(product_id=1, name="x", stock=1, product_version=1, updated_at=utc_now()))
    assert await outbox_rows(runtime.database) == 0


@pytest.fixture(autouse=True)
async def empty_outbox_and_queue(runtime: Runtime, management: Management) -> None:
    async with runtime.database.transaction() as connection:
        await connection.execute(outbox_table(runtime.database.metadata).delete())
    await management.take("user_registered_queue", count=1000)


async def test_event_is_published_right_after_commit(runtime: Runtime, management: Management) -> None:
    outbox = runtime.outbox
    outbox.start()
    try:
        event = UserRegistered(user_id=1, email="fast@example.com")
        async with outbox.transaction() as unit:
            unit.publish(event)
        # Well inside the relay's grace period: this was the dispatcher, not the relay.
        await eventually(lambda: outbox_rows_equal(runtime.database, 0), timeout=1.0, interval=0.02)
        assert str(event.event_id) in await delivered_ids(management)
    finally:
        await outbox.close()


async def outbox_rows_equal(database: Database, expected: int) -> bool:
    return await outbox_rows(database) == expected


async def test_rolled_back_transaction_publishes_nothing(runtime: Runtime, management: Management) -> None:
    outbox = runtime.outbox
    outbox.start()

    async def register_then_fail() -> None:
        async with outbox.transaction() as unit:
            await unit.connection.execute(PINGS.insert().values(event_id=str(uuid.uuid4()), note="never"))
            unit.publish(UserRegistered(user_id=2, email="never@example.com"))
            raise RuntimeError("business rule failed")

    try:
        with pytest.raises(RuntimeError, match="business rule failed"):
            await register_then_fail()
    finally:
        await outbox.close()
    assert await outbox_rows(runtime.database) == 0
    assert await delivered_ids(management) == set()


async def test_relay_delivers_what_a_crash_left_behind(runtime: Runtime, management: Management) -> None:
    # A process that committed and then died: its dispatcher never ran (this Outbox is not started).
    crashed = Outbox(runtime.settings, runtime.database, runtime.broker)
    events = [UserRegistered(user_id=index, email=f"crash{index}@example.com") for index in range(3)]
    async with crashed.transaction() as unit:
        for event in events:
            unit.publish(event)
    assert await outbox_rows(runtime.database) == 3
    assert await delivered_ids(management) == set(), "nothing should have been published yet"

    # The next process to start (or a replica) runs the relay.
    successor = Outbox(runtime.settings, runtime.database, runtime.broker)
    await asyncio.sleep(runtime.settings.outbox_relay_grace_s)
    assert await successor.relay_once() == 3

    assert await delivered_ids(management) == {str(event.event_id) for event in events}
    assert await outbox_rows(runtime.database) == 0


async def test_relay_leaves_fresh_rows_to_the_dispatcher(runtime: Runtime) -> None:
    crashed = Outbox(runtime.settings, runtime.database, runtime.broker)
    async with crashed.transaction() as unit:
        unit.publish(UserRegistered(user_id=9, email="young@example.com"))
    assert await crashed.relay_once() == 0, "rows younger than the grace period belong to their dispatcher"
    assert await crashed.backlog() == (1, pytest.approx(0.0, abs=1.0))
