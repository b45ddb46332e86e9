"""Scenario 5, the order saga by choreography: both outcomes, refusals, the timeline, and the stock
contract with the catalogue (inventory owns the stock; the catalogue sets it with StockLevelSet)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.saga import Saga, steps_of, unique_product_id
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e


def assert_adds_up(figures: dict) -> None:
    assert min(figures["available"], figures["reserved"], figures["sold"]) >= 0, figures
    assert figures["available"] + figures["reserved"] + figures["sold"] == figures["total"], figures


async def test_paid_order_completes_and_its_reservation_becomes_a_sale(saga: Saga) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)

    accepted = await saga.create_order(product_id, 3, "succeed")
    assert accepted == {"id": accepted["id"], "product_id": product_id, "quantity": 3, "status": "pending"}

    order = await saga.settled(accepted["id"], steps=3)
    assert order["status"] == "completed", order
    assert order["failure_reason"] is None
    assert steps_of(order) == ["order_created", "stock_reserved", "payment_completed"]
    assert [step["event_type"] for step in order["timeline"]] == ["OrderCreated", "StockReserved", "PaymentCompleted"]
    assert [step["service"] for step in order["timeline"]] == ["orderservice", "inventoryservice", "paymentservice"]
    times = [step["at"] for step in order["timeline"]]
    assert times == sorted(times)

    figures = await eventually(lambda: _sold(saga, product_id, 3))
    assert (figures["available"], figures["reserved"], figures["sold"], figures["total"]) == (7, 0, 3, 10)
    assert (await saga.reservation(accepted["id"]))["status"] == "sold"
    [payment] = await saga.payments_for(accepted["id"])
    assert payment["status"] == "completed"
    assert payment["amount"] == "30.00"
    assert payment["transaction_id"].startswith("txn_")


async def _sold(saga: Saga, product_id: int, sold: int) -> dict | None:
    figures = await saga.stock(product_id)
    return figures if figures and figures["sold"] == sold else None
