"""Scenario 5, the order saga by choreography: both outcomes, refusals, the timeline, and the stock
contract with the catalogue (inventory owns the stock; the catalogue sets it with StockLevelSet)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from common.topology import STOCK_LEVELS
from tests.support.rabbitmq import Management
from tests.support.saga import Saga, body_of, steps_of, unique_product_id
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e


def assert_adds_up(figures: dict[str, Any]) -> None:
    assert min(figures["available"], figures["reserved"], figures["sold"]) >= 0, figures
    assert figures["available"] + figures["reserved"] + figures["sold"] == figures["total"], figures


def figures_of(stock: dict[str, Any] | None) -> tuple[int, int, int, int]:
    assert stock is not None
    assert_adds_up(stock)
    return stock["available"], stock["reserved"], stock["sold"], stock["total"]


async def stock_becomes(saga: Saga, product_id: int, expected: tuple[int, int, int, int]) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        stock = await saga.stock(product_id)
        return stock if stock is not None and figures_of(stock) == expected else None

    return await eventually(probe, message=f"product {product_id} never showed {expected}")


async def test_design_doc_example_fails_and_compensates(saga: Saga, http: httpx.AsyncClient) -> None:
    # Product 1 is the catalogue's seed; give inventory its stock the way the catalogue does if it
    # has none yet (version 1: a no-op when the catalogue already set it).
    if await saga.stock(1) is None:
        await saga.set_stock(1, 100, product_version=1)
    before = await saga.stock(1)
    assert before is not None
    assert before["available"] >= 1, "product 1 needs stock for the example"

    response = await http.post(f"{saga.orders_url}/create_order", json={"product_id": 1, "quantity": 1})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted == {"id": accepted["id"], "product_id": 1, "quantity": 1, "status": "pending"}

    order = await saga.settled(accepted["id"], steps=4)
    assert order["status"] == "failed", "SAGA_PAYMENT_FAILURE_RATE defaults to 1: the example's payment fails"
    assert order["failure_reason"] == "payment_declined"
    assert {key: order[key] for key in ("id", "product_id", "quantity")} == {
        "id": accepted["id"],
        "product_id": 1,
        "quantity": 1,
    }
    assert steps_of(order) == ["order_created", "stock_reserved", "payment_failed", "stock_released"]

    reservation = await saga.reservation(accepted["id"])
    assert reservation is not None
    assert (reservation["status"], reservation["quantity"]) == ("released", 1)
    after = await saga.stock(1)
    assert after is not None
    assert_adds_up(after)
    assert after["reserved"] == before["reserved"], "the reservation was released"
    [payment] = await saga.payments_for(accepted["id"])
    assert (payment["status"], payment["transaction_id"]) == ("failed", None)


async def test_paid_order_completes_and_its_reservation_becomes_a_sale(saga: Saga, http: httpx.AsyncClient) -> None:
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
    assert all(step["event_id"] and step["detail"] for step in order["timeline"])

    await stock_becomes(saga, product_id, (7, 0, 3, 10))
    assert (await saga.reservation(accepted["id"]) or {}).get("status") == "sold"
    [payment] = await saga.payments_for(accepted["id"])
    assert payment["status"] == "completed"
    assert (payment["amount"], payment["currency"]) == ("30.00", "USD")
    assert payment["transaction_id"].startswith("txn_")

    metrics = (await http.get(f"{saga.orders_url}/metrics")).text
    assert 'saga_duration_seconds_count{reason="",status="completed"}' in metrics


async def test_failed_payment_releases_exactly_that_orders_reservation(saga: Saga) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)
    # One order stays reserved while another's payment fails: only the failed one's stock comes back.
    held = await saga.create_order(product_id, 4, "succeed")
    await saga.settled(held["id"])
    accepted = await saga.create_order(product_id, 2, "fail")

    order = await saga.settled(accepted["id"], steps=4)
    assert (order["status"], order["failure_reason"]) == ("failed", "payment_declined")
    assert steps_of(order) == ["order_created", "stock_reserved", "payment_failed", "stock_released"]
    assert order["timeline"][-1]["service"] == "inventoryservice"
    assert "2 of product" in order["timeline"][-1]["detail"]

    await stock_becomes(saga, product_id, (6, 0, 4, 10))
    assert (await saga.reservation(accepted["id"]) or {}).get("status") == "released"
    assert (await saga.reservation(held["id"]) or {}).get("status") == "sold"


async def test_default_policy_fails_the_payment(saga: Saga) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 5)
    order = await saga.settled((await saga.create_order(product_id, 5))["id"], steps=4)
    assert (order["status"], order["failure_reason"]) == ("failed", "payment_declined")
    await stock_becomes(saga, product_id, (5, 0, 0, 5))


async def test_insufficient_stock_fails_without_attempting_payment(saga: Saga) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 2)

    accepted = await saga.create_order(product_id, 3, "succeed")
    order = await saga.settled(accepted["id"], steps=2)
    assert (order["status"], order["failure_reason"]) == ("failed", "insufficient_stock")
    assert steps_of(order) == ["order_created", "stock_reservation_failed"]
    assert "2 available" in order["timeline"][1]["detail"]

    async def untouched() -> bool:
        return (
            figures_of(await saga.stock(product_id)) == (2, 0, 0, 2) and await saga.payments_for(accepted["id"]) == []
        )

    await stays(untouched, duration=1.0, message="a refused order reserved stock or reached the payment service")
    assert (await saga.reservation(accepted["id"]) or {}).get("status") == "rejected"


async def test_order_for_a_product_inventory_does_not_know_fails_cleanly(saga: Saga) -> None:
    product_id = unique_product_id()
    order = await saga.settled((await saga.create_order(product_id, 1, "succeed"))["id"], steps=2)
    assert (order["status"], order["failure_reason"]) == ("failed", "unknown_product")
    assert steps_of(order) == ["order_created", "stock_reservation_failed"]
    assert await saga.stock(product_id) is None
    assert await saga.payments_for(order["id"]) == []


@pytest.mark.parametrize(
    "payload",
    [
        {"product_id": 1, "quantity": 0},
        {"product_id": 1, "quantity": -1},
        {"product_id": 1, "quantity": 1001},
        {"product_id": 1, "quantity": 1.5},
        {"product_id": 1, "quantity": "2"},
        {"product_id": 1, "quantity": True},
        {"product_id": 0, "quantity": 1},
        {"product_id": 2**31, "quantity": 1},
        {"product_id": "one", "quantity": 1},
        {"quantity": 1},
        {"product_id": 1},
        {"product_id": 1, "quantity": 1, "payment_behaviour": "maybe"},
        {"product_id": 1, "quantity": 1, "unexpected": True},
    ],
)
async def test_invalid_orders_are_refused(saga: Saga, http: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    response = await http.post(f"{saga.orders_url}/create_order", json=payload)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_unknown_order_and_bad_queries(saga: Saga, http: httpx.AsyncClient) -> None:
    missing = await http.get(f"{saga.orders_url}/orders/2147483000")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "order 2147483000 not found"}
    assert (await http.get(f"{saga.orders_url}/orders/abc")).status_code == 422
    assert (await http.get(f"{saga.orders_url}/orders", params={"status": "lost"})).status_code == 422
    assert (await http.get(f"{saga.inventory_url}/inventory/{unique_product_id()}")).status_code == 404
    assert (await http.get(f"{saga.inventory_url}/reservations/2147483000")).status_code == 404


async def test_orders_are_listed_by_status_and_product(saga: Saga, http: httpx.AsyncClient) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)
    paid = await saga.create_order(product_id, 1, "succeed")
    declined = await saga.create_order(product_id, 1, "fail")
    await saga.settled(paid["id"])
    await saga.settled(declined["id"])

    listed = await saga.orders_of_product(product_id)
    assert [order["id"] for order in listed] == [declined["id"], paid["id"]], "newest first"
    completed = (await http.get(f"{saga.orders_url}/orders", params={"status": "completed", "limit": 500})).json()
    failed = (await http.get(f"{saga.orders_url}/orders", params={"status": "failed", "limit": 500})).json()
    assert paid["id"] in {order["id"] for order in completed}
    assert declined["id"] not in {order["id"] for order in completed}
    assert declined["id"] in {order["id"] for order in failed}
    assert all(order["status"] == "completed" for order in completed)


async def test_catalogue_stock_sets_are_adjustments_and_every_change_is_announced(
    saga: Saga, management: Management
) -> None:
    """Inventory owns the stock: StockLevelSet moves `available` to the catalogue's figure and counts
    the difference as a restock or write-off; older sets are ignored; each change is announced."""
    product_id = unique_product_id()
    tap = f"test_tap_stock_levels_{secrets.token_hex(4)}"
    await management.tap(STOCK_LEVELS.name, tap)
    try:
        await saga.set_stock(product_id, 10, product_version=1)
        assert figures_of(await saga.stock(product_id)) == (10, 0, 0, 10)

        order = await saga.create_order(product_id, 3, "succeed")
        await saga.settled(order["id"])
        await stock_becomes(saga, product_id, (7, 0, 3, 10))

        await saga.set_stock(product_id, 20, product_version=2)  # a restock of 13
        assert figures_of(await saga.stock(product_id)) == (20, 0, 3, 23)

        # A stale set (older version), and a repeat of the applied one, change nothing.
        await saga.publish_stock_set(product_id, 5, product_version=1)
        await saga.publish_stock_set(product_id, 20, product_version=2)
        await saga.set_stock(product_id, 0, product_version=3)  # written off: nothing left to sell
        assert figures_of(await saga.stock(product_id)) == (0, 0, 3, 3)

        refused = await saga.settled((await saga.create_order(product_id, 1, "succeed"))["id"])
        assert refused["failure_reason"] == "insufficient_stock"

        final = await saga.stock(product_id)
        assert final is not None

        async def announced() -> list[dict[str, Any]] | None:
            messages = [body_of(message) for message in await management.peek(tap, count=200)]
            mine = [event for event in messages if event["product_id"] == product_id]
            return mine if mine and mine[-1]["stock_version"] == final["stock_version"] else None

        changes = await eventually(announced, message="inventory did not announce its figures")
        versions = [event["stock_version"] for event in changes]
        assert versions == sorted(set(versions)), "stock_version increases with every change"
        # set 10, reserve, sell, set 20, set 0: five changes; the stale and repeated sets none.
        assert len(changes) == 5, changes
        assert [(event["available"], event["reserved"], event["sold"]) for event in changes] == [
            (10, 0, 0),
            (7, 3, 0),
            (7, 0, 3),
            (20, 0, 3),
            (0, 0, 3),
        ]
        assert all(event["event_type"] == "StockLevelChanged" for event in changes)
    finally:
        await management.delete_queue(tap)
