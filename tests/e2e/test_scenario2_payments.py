"""Scenario 2, background payment: 202 at once, the gateway's delay in a worker, status polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e

ACCEPTED_MESSAGE = "Payment initiated successfully. Processing asynchronously."
SLOW_GATEWAY_S = 1.0


async def pay(http: httpx.AsyncClient, base_url: str, **payload: Any) -> dict[str, Any]:
    response = await http.post(f"{base_url}/process_payment", json=payload)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def payment(http: httpx.AsyncClient, base_url: str, payment_id: str) -> dict[str, Any]:
    response = await http.get(f"{base_url}/payments/{payment_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def settled(http: httpx.AsyncClient, base_url: str, payment_id: str, timeout: float = 15) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await payment(http, base_url, payment_id)
        return found if found["status"] != "processing" else None

    return await eventually(probe, timeout=timeout, message=f"payment {payment_id} still processing")


async def test_design_doc_example_is_accepted_then_completed_and_audited(fleet: Fleet, http: httpx.AsyncClient) -> None:
    url = fleet.url("paymentservice")
    accepted = await pay(http, url, amount=100.0, currency="USD")
    assert accepted == {"payment_id": accepted["payment_id"], "status": "processing", "message": ACCEPTED_MESSAGE}
    assert accepted["payment_id"].startswith("pay_")

    done = await settled(http, url, accepted["payment_id"])
    assert done["status"] == "completed"
    assert done["transaction_id"].startswith("txn_")
    assert (done["amount"], done["currency"], done["failure_reason"]) == ("100.00", "USD", None)
    assert done["order_id"] is None
    # The PaymentCompleted announcement reaches payment_completed_queue, whose consumer keeps the audit trail.
    audited = await eventually(
        lambda: _audited(http, url, accepted["payment_id"]), message="PaymentCompleted was not audited"
    )
    assert audited["audited_at"] >= audited["settled_at"]


async def test_a_payment_outside_the_saga_reaches_the_audit_trail_alone(
    fleet: Fleet, http: httpx.AsyncClient, management: Management
) -> None:
    # A queue of the test's own on the saga's fanout sees what the saga's participants would be sent.
    await management.tap("payment_completed", "test_payment_completed_tap")
    try:
        url = fleet.url("paymentservice")
        accepted = await pay(http, url, amount=12.5, currency="USD")
        await eventually(lambda: _audited(http, url, accepted["payment_id"]), message="not audited")
        assert await management.peek("test_payment_completed_tap") == [], "sent to the saga's queues too"
    finally:
        await management.delete_queue("test_payment_completed_tap")


async def _audited(http: httpx.AsyncClient, url: str, payment_id: str) -> dict[str, Any] | None:
    found = await payment(http, url, payment_id)
    return found if found["audited_at"] else None


async def test_declined_payment_fails_with_a_reason_and_is_not_announced(fleet: Fleet, http: httpx.AsyncClient) -> None:
    url = fleet.url("paymentservice")
    accepted = await pay(http, url, amount="12.50", currency="eur", payment_behaviour="fail")
    done = await settled(http, url, accepted["payment_id"])
    assert (done["status"], done["failure_reason"], done["transaction_id"]) == ("failed", "payment_declined", None)
    assert done["currency"] == "EUR"

    async def not_audited() -> bool:
        return (await payment(http, url, accepted["payment_id"]))["audited_at"] is None

    await stays(not_audited, duration=0.5, message="a declined payment was announced as completed")


@pytest.mark.parametrize(
    "payload",
    [
        {"amount": 0, "currency": "USD"},
        {"amount": -5, "currency": "USD"},
        {"amount": 1_000_000.01, "currency": "USD"},
        {"amount": 10.123, "currency": "USD"},
        {"amount": "ten", "currency": "USD"},
        {"amount": True, "currency": "USD"},
        {"amount": "NaN", "currency": "USD"},
        {"currency": "USD"},
        {"amount": 10, "currency": "US"},
        {"amount": 10, "currency": "USDX"},
        {"amount": 10, "currency": "U5D"},
        {"amount": 10, "currency": 840},
        {"amount": 10},
        {"amount": 10, "currency": "USD", "payment_behaviour": "maybe"},
        {"amount": 10, "currency": "USD", "card": "4111"},
    ],
)
async def test_invalid_payments_are_refused(fleet: Fleet, http: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    response = await http.post(f"{fleet.url('paymentservice')}/process_payment", json=payload)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_unknown_payment_is_not_found(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{fleet.url('paymentservice')}/payments/pay_000000000000000000000000")
    assert response.status_code == 404
    assert response.json() == {"detail": "payment pay_000000000000000000000000 not found"}


@pytest.fixture
async def slow_gateway_replicas(fleet: Fleet) -> AsyncIterator[tuple[str, str]]:
    """The payment service with a slower gateway, scaled to two processes; put back afterwards."""
    await fleet.restart("paymentservice", {"PAYMENT_DELAY_S": str(SLOW_GATEWAY_S)})
    replica = await fleet.start_replica("paymentservice")
    try:
        yield fleet.url("paymentservice"), fleet.url(replica)
    finally:
        await fleet.stop(replica)
        await fleet.restart("paymentservice")


async def test_status_is_processing_until_the_gateway_answers_on_every_replica(
    http: httpx.AsyncClient, slow_gateway_replicas: tuple[str, str]
) -> None:
    first, second = slow_gateway_replicas
    accepted = await pay(http, second, amount=42, currency="GBP")
    # Any replica answers for any payment: the status lives in the service's tables, not in a process.
    assert (await payment(http, first, accepted["payment_id"]))["status"] == "processing"

    done = await settled(http, first, accepted["payment_id"])
    assert done["status"] == "completed"
    # The audit record arrives a moment after the settlement; everything else must read the same.
    elsewhere = await payment(http, second, accepted["payment_id"])
    assert {**elsewhere, "audited_at": None} == {**done, "audited_at": None}
    waited = datetime.fromisoformat(done["settled_at"]) - datetime.fromisoformat(done["created_at"])
    assert waited.total_seconds() >= SLOW_GATEWAY_S * 0.95, "the worker answered before the gateway's delay"


async def test_payments_wait_for_the_gateway_concurrently(
    http: httpx.AsyncClient, slow_gateway_replicas: tuple[str, str]
) -> None:
    """Waiting for the gateway holds no database connection, so the waits overlap. Were a waiting
    payment to hold one, two replicas with DB_POOL_SIZE (6) connections each could settle at most 12
    payments in any window as long as the gateway's delay; they settle far more."""
    first, second = slow_gateway_replicas
    count, bound_if_holding = 120, 2 * 6
    accepted = await asyncio.gather(
        *(pay(http, (first, second)[n % 2], amount=n + 1, currency="USD") for n in range(count))
    )
    ids = {item["payment_id"] for item in accepted}

    async def all_completed() -> list[dict[str, Any]] | None:
        response = await http.get(f"{first}/payments", params={"limit": 500})
        mine = [item for item in response.json() if item["payment_id"] in ids and item["status"] == "completed"]
        return mine if len(mine) == count else None

    completed = await eventually(all_completed, timeout=60, interval=0.5, message="not every payment completed")
    settled_at = sorted(datetime.fromisoformat(item["settled_at"]).timestamp() for item in completed)
    busiest = max(sum(1 for other in settled_at if start <= other < start + SLOW_GATEWAY_S) for start in settled_at)
    print(f"{busiest} of {count} payments settled within one {SLOW_GATEWAY_S}s gateway delay")
    assert busiest > 2 * bound_if_holding, f"only {busiest} payments settled within one gateway delay"
