"""One fault at a time under steady mixed load; then every request in the ledger is reconciled.

Each test fails on any request lost or applied twice, on any refused request that took effect, on
any order, payment or stock figure that does not add up, on queues or outboxes that do not drain,
on dead letters other than the poison the test itself injected, and on a service that is not ready
again within RECOVERY_BOUND_S without being restarted by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from common.consumer import DEAD_LETTER_REASON_HEADER
from common.events import Click, ClicksTracked, OrderCreated, UserRegistered
from common.topology import CLICK_TRACKED, ORDER_CREATED, PAYMENT_INITIATED, SEARCH_PRODUCT_UPDATES, USER_REGISTERED
from tests.faults.conftest import FaultReport
from tests.faults.harness import OUTAGE_S, all_ready, dead_letters, run_fault
from tests.faults.load import Ledger, Phase, click_page
from tests.faults.private_infra import PrivateInfra
from tests.faults.reconcile import asyncpg_dsn
from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults


@pytest.fixture
def faults(
    private: PrivateInfra, fleet: Fleet, http: httpx.AsyncClient, management: Management, fault_report: FaultReport
) -> dict[str, Any]:
    return {"private": private, "fleet": fleet, "http": http, "management": management, "fault_report": fault_report}


async def test_broker_restart(faults: dict[str, Any], management: Management) -> None:
    private: PrivateInfra = faults["private"]

    async def restart_broker() -> tuple[float, str]:
        stopped = time.monotonic()
        await private.rabbitmq.stop()
        await asyncio.sleep(OUTAGE_S)
        await private.rabbitmq.start()
        down_s = time.monotonic() - stopped
        recovery_s = await all_ready(faults["fleet"], faults["http"])
        return recovery_s, (
            f"RabbitMQ node stopped cleanly (`rabbitmqctl stop`) and started again; down {down_s:.1f} s. "
            "Meanwhile every request, clicks included, was taken into the services' outboxes and relayed once "
            "it was back."
        )

    ledger = Ledger()
    await run_fault("RabbitMQ restart", restart_broker, ledger=ledger, **faults)
    assert await dead_letters(management) == {}
    # With PostgreSQL up, a click the broker cannot confirm goes into the outbox: none is refused.
    assert ledger.of("click", "refused") == [], "clicks refused while the database could keep them"


async def test_consumers_killed_holding_unacknowledged_messages(
    faults: dict[str, Any], fleet: Fleet, management: Management
) -> None:
    # Slow handlers and long click batches, so both consumers always hold deliveries when killed.
    holding = {"emailservice": {"EMAIL_SEND_DELAY_S": "0.5"}, "analyticsservice": {"CLICK_BATCH_MAX_WAIT_S": "1"}}
    for name, environment in holding.items():
        await fleet.restart(name, environment)
    held: dict[str, int] = {}  # unacknowledged deliveries per queue when the consumers were killed

    async def kill_consumers() -> tuple[float, str]:
        async def unacknowledged(queue: str) -> int:
            return int((await management.queue(queue)).get("messages_unacknowledged", 0))

        # Not asserted here: a core that acknowledges on receipt holds nothing, and the reconciliation
        # should be what catches it (as lost work), not this wait.
        for queue in (USER_REGISTERED.name, CLICK_TRACKED.name):
            held[queue] = 0
            with contextlib.suppress(AssertionError):
                held[queue] = await eventually(lambda queue=queue: unacknowledged(queue), timeout=10)
        await asyncio.gather(*(fleet.kill(name) for name in holding))
        await asyncio.sleep(OUTAGE_S)
        started = time.monotonic()
        # As a supervisor would: the same processes with the same settings.
        await asyncio.gather(*(fleet.start(name, environment=holding[name]) for name in holding))
        recovery_s = time.monotonic() - started
        return recovery_s, (
            f"SIGKILL to emailservice and analyticsservice while they held unacknowledged deliveries "
            f"(registrations: {held[USER_REGISTERED.name]}, clicks: {held[CLICK_TRACKED.name]}, as the management "
            f"API last sampled them); restarted after {OUTAGE_S:.0f} s; time to recover is their start to ready."
        )

    try:
        await run_fault("Consumers killed (SIGKILL)", kill_consumers, **faults)
    finally:
        for name in holding:
            await fleet.restart(name)
    assert await dead_letters(management) == {}
    assert all(held.values()), f"a consumer held no unacknowledged delivery when it was killed: {held}"


async def test_postgres_restart(faults: dict[str, Any], management: Management) -> None:
    private: PrivateInfra = faults["private"]

    async def crash_postgres() -> tuple[float, str]:
        await private.postgres.crash()
        await asyncio.sleep(OUTAGE_S)
        await private.postgres.start()
        recovery_s = await all_ready(faults["fleet"], faults["http"])
        return recovery_s, (
            f"PostgreSQL stopped with `pg_ctl stop -m immediate` (no checkpoint: crash recovery on start), "
            f"down {OUTAGE_S:.0f} s. Requests needing the database were refused with 503 meanwhile; consumers "
            "deferred their deliveries until it was back."
        )

    await run_fault("PostgreSQL restart", crash_postgres, **faults)
    assert await dead_letters(management) == {}


async def test_email_and_search_down_for_a_while(faults: dict[str, Any], fleet: Fleet, management: Management) -> None:
    stopped = ("emailservice", "searchservice")

    async def stop_and_return() -> tuple[float, str]:
        await asyncio.gather(*(fleet.stop(name) for name in stopped))
        await asyncio.sleep(3 * OUTAGE_S)
        backlog = {
            queue: await management.depth(queue) for queue in (USER_REGISTERED.name, SEARCH_PRODUCT_UPDATES.name)
        }
        started = time.monotonic()
        await asyncio.gather(*(fleet.start(name) for name in stopped))
        recovery_s = time.monotonic() - started
        return recovery_s, (
            f"emailservice and searchservice stopped (SIGTERM) for {3 * OUTAGE_S:.0f} s; their queues held "
            f"{backlog[USER_REGISTERED.name]} registrations and {backlog[SEARCH_PRODUCT_UPDATES.name]} product "
            "updates when they came back, and drained."
        )

    await run_fault("Email and search down", stop_and_return, **faults)
    assert await dead_letters(management) == {}


POISON_QUEUES = (USER_REGISTERED, CLICK_TRACKED, ORDER_CREATED, PAYMENT_INITIATED, SEARCH_PRODUCT_UPDATES)
POISON_BODIES = {
    "not-json": "{this is not json",
    "wrong-schema": json.dumps({"event_type": "Nonsense", "event_id": "not-a-uuid"}),
    "wrong-type": json.dumps([1, 2, 3]),
}


async def test_duplicate_and_malformed_messages(faults: dict[str, Any], management: Management) -> None:
    private: PrivateInfra = faults["private"]
    injected: dict[str, set[str]] = {}
    duplicates: dict[str, int] = {}

    async def inject_poison() -> tuple[float, str]:
        for queue in POISON_QUEUES:
            for kind, body in POISON_BODIES.items():
                message_id = f"poison-{kind}-{uuid.uuid4()}"
                await management.publish(queue.name, body, {"message_id": message_id, "type": kind})
                injected.setdefault(queue.dead_letter_queue, set()).add(message_id)
        return None, "Published mid-load straight into the queues (the management API), with no outage."

    async def inject_duplicates(phase: Phase) -> None:
        # Events that were handled already, sent again with their own event ids: the broker's redelivery
        # after a lost acknowledgement, or a publisher retrying after a lost confirm.
        connection = await asyncpg.connect(asyncpg_dsn(private.infra))
        try:
            emails = await connection.fetch(
                "SELECT event_id, user_id, recipient FROM emailservice.sent_emails WHERE recipient LIKE $1",
                f"{phase.name}-%",
            )
            orders = await connection.fetch(
                "SELECT id, created_event_id, product_id, quantity, payment_behaviour, correlation_id "
                "FROM orderservice.orders WHERE product_id = $1",
                phase.order_product_id,
            )
            clicks = await connection.fetch(
                "SELECT event_id FROM analyticsservice.processed_events WHERE consumer = $1 "
                "ORDER BY processed_at DESC LIMIT 50",
                CLICK_TRACKED.name,
            )
        finally:
            await connection.close()
        events = [
            *(
                UserRegistered(event_id=row["event_id"], user_id=row["user_id"], email=row["recipient"])
                for row in emails
            ),
            *(
                OrderCreated(
                    event_id=row["created_event_id"],
                    order_id=row["id"],
                    product_id=row["product_id"],
                    quantity=row["quantity"],
                    payment_behaviour=row["payment_behaviour"],
                    correlation_id=row["correlation_id"],
                )
                for row in orders
            ),
            # A counted click again, on a page of this phase: counted twice, the page's figure would show it.
            *(
                ClicksTracked(event_id=row["event_id"], clicks=(Click(user_id=1, page=click_page(phase, 0)),))
                for row in clicks
            ),
        ]
        queue_of = {UserRegistered: USER_REGISTERED, OrderCreated: ORDER_CREATED, ClicksTracked: CLICK_TRACKED}
        for event in events:
            queue = queue_of[type(event)]
            properties = {"message_id": str(event.event_id), "type": event.event_type}
            for _ in range(2):
                await management.publish(queue.name, event.model_dump_json(), properties)
            duplicates[queue.name] = duplicates.get(queue.name, 0) + 2
        assert all(duplicates.get(queue.name) for queue in queue_of.values()), duplicates

    findings = await run_fault(
        "Duplicate and malformed messages", inject_poison, during_load=inject_duplicates, **faults
    )

    letters = await eventually(lambda: _all_dead_lettered(management, injected), timeout=30)
    for queue, messages in letters.items():
        for message in messages:
            reason = message["properties"].get("headers", {}).get(DEAD_LETTER_REASON_HEADER)
            assert reason, f"{queue}: {message['properties'].get('message_id')} dead-lettered without a reason"
    assert {queue: {m["properties"]["message_id"] for m in messages} for queue, messages in letters.items()} == injected
    for queue in letters:
        await management.take(queue, count=1000)  # the poison was the test's own; leave the DLQs empty
    faults["fault_report"].extend_last_note(
        f"Injected {sum(len(ids) for ids in injected.values())} malformed messages into {len(POISON_QUEUES)} queues "
        f"(each ended in its queue's `.dlq` with a reason, nothing else did) and "
        f"{sum(duplicates.values())} copies of already-handled events ({duplicates}); none was applied again."
    )
    assert not findings.problems


async def _all_dead_lettered(
    management: Management, injected: dict[str, set[str]]
) -> dict[str, list[dict[str, Any]]] | None:
    letters = await dead_letters(management)
    found = sum(len(messages) for messages in letters.values())
    return letters if found >= sum(len(ids) for ids in injected.values()) else None
