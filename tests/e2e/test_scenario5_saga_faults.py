"""Scenario 5 under faults: the saga timeout with the payment service down (and its late return),
duplicate saga events injected straight into the queues, and many concurrent orders."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from common import topology
from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.saga import Saga, body_of, steps_of, unique_product_id
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e

SHORT_SAGA_TIMEOUT_S = 2.0


def figures_of(stock: dict[str, Any] | None) -> tuple[int, int, int, int]:
    assert stock is not None
    assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0, stock
    assert stock["available"] + stock["reserved"] + stock["sold"] == stock["total"], stock
    return stock["available"], stock["reserved"], stock["sold"], stock["total"]


async def stock_becomes(saga: Saga, product_id: int, expected: tuple[int, int, int, int]) -> None:
    async def probe() -> bool:
        return figures_of(await saga.stock(product_id)) == expected

    await eventually(probe, timeout=30, message=f"product {product_id} never showed {expected}")


async def take_all(management: Management, queue: str, count: int) -> dict[int, dict[str, Any]]:
    """Take `count` messages out of `queue` (as if they were still on their way), by order id."""
    taken: dict[int, dict[str, Any]] = {}

    async def probe() -> bool:
        for message in await management.take(queue, count=count):
            taken[body_of(message)["order_id"]] = message
        return len(taken) >= count

    await eventually(probe, message=f"{queue} did not hold {count} messages")
    return taken


# --- The saga timeout ---------------------------------------------------------------------------


@pytest.fixture
async def short_saga_timeout(fleet: Fleet) -> AsyncIterator[float]:
    """The order service alone with a short saga timeout (orders keep the deadline they were given)."""
    await fleet.restart("orderservice", {"SAGA_TIMEOUT_S": str(SHORT_SAGA_TIMEOUT_S)})
    try:
        yield SHORT_SAGA_TIMEOUT_S
    finally:
        await fleet.restart("orderservice")


async def test_orders_time_out_while_payment_is_down_and_money_and_stock_add_up_when_it_returns(
    saga: Saga, fleet: Fleet, management: Management, short_saga_timeout: float
) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)
    await fleet.stop("paymentservice")
    try:
        late_charge = await saga.create_order(product_id, 2, "succeed")  # charged late, then refunded
        never_charged = await saga.create_order(product_id, 3, "succeed")  # cancellation reaches payment first
        left_alone = await saga.create_order(product_id, 1)  # its messages are read in whatever order
        ids = [late_charge["id"], never_charged["id"], left_alone["id"]]

        for order_id in ids:
            order = await saga.settled(order_id, timeout=short_saga_timeout + 15, steps=4)
            assert (order["status"], order["failure_reason"]) == ("failed", "timeout"), order
            assert steps_of(order)[:3] == ["order_created", "stock_reserved", "order_timed_out"]
            assert "stock_released" in steps_of(order)
        await stock_becomes(saga, product_id, (10, 0, 0, 10))
        assert {(await saga.reservation(order_id) or {}).get("status") for order_id in ids} == {"released"}

        # The payment service's queues hold its part of the saga meanwhile; take it out to choose the
        # order in which the two races reach it.
        charges = await take_all(management, topology.STOCK_RESERVED.name, 3)
        cancellations = await take_all(management, topology.PAYMENT_ORDER_CANCELLED.name, 3)
        await management.republish(charges[left_alone["id"]], topology.STOCK_RESERVED.name)
        await management.republish(cancellations[left_alone["id"]], topology.PAYMENT_ORDER_CANCELLED.name)
    finally:
        await fleet.start("paymentservice")

    await management.republish(charges[late_charge["id"]], topology.STOCK_RESERVED.name)
    await management.republish(cancellations[never_charged["id"]], topology.PAYMENT_ORDER_CANCELLED.name)
    charged = await eventually(lambda: _payment_in(saga, late_charge["id"], "completed"), timeout=20)
    await eventually(lambda: _payment_in(saga, never_charged["id"], "cancelled"), timeout=20)

    await management.republish(cancellations[late_charge["id"]], topology.PAYMENT_ORDER_CANCELLED.name)
    await management.republish(charges[never_charged["id"]], topology.STOCK_RESERVED.name)
    refunded = await eventually(lambda: _payment_in(saga, late_charge["id"], "refunded"), timeout=20)
    assert refunded["transaction_id"] == charged["transaction_id"]
    assert refunded["refund_id"].startswith("ref_")

    async def payment_worker_done() -> bool:
        charged = await saga.consumed("paymentservice", topology.STOCK_RESERVED.name, "acked")
        cancelled = await saga.consumed("paymentservice", topology.PAYMENT_ORDER_CANCELLED.name, "acked")
        return charged >= 3 and cancelled >= 3

    await eventually(payment_worker_done, timeout=20, message="the payment service did not work its queues")

    # The late charge shows in the timeline, but the order stays failed and its money came back.
    order = await saga.settled(late_charge["id"], steps=6)
    assert (order["status"], order["failure_reason"]) == ("failed", "timeout")
    assert steps_of(order)[-2:] == ["payment_completed", "payment_refunded"]
    assert "arrived after the order had failed (timeout)" in order["timeline"][-2]["detail"]

    # The cancellation again - the same message, and the same fact as a new event - refunds and
    # releases nothing more.
    cancellation = cancellations[late_charge["id"]]
    handled_before = await saga.consumed("paymentservice", topology.PAYMENT_ORDER_CANCELLED.name, "acked")
    duplicates_before = await saga.consumed("paymentservice", topology.PAYMENT_ORDER_CANCELLED.name, "duplicate")
    released_before = await saga.consumed("inventoryservice", topology.INVENTORY_ORDER_CANCELLED.name, "acked")
    await management.republish(cancellation, topology.PAYMENT_ORDER_CANCELLED.name)
    for queue in (topology.PAYMENT_ORDER_CANCELLED, topology.INVENTORY_ORDER_CANCELLED):
        event_id = str(uuid.uuid4())
        retold = json.dumps({**body_of(cancellation), "event_id": event_id})
        await management.publish(queue.name, retold, {"message_id": event_id})

    async def cancellations_handled() -> bool:
        acked = await saga.consumed("paymentservice", topology.PAYMENT_ORDER_CANCELLED.name, "acked")
        duplicates = await saga.consumed("paymentservice", topology.PAYMENT_ORDER_CANCELLED.name, "duplicate")
        released = await saga.consumed("inventoryservice", topology.INVENTORY_ORDER_CANCELLED.name, "acked")
        return acked > handled_before and duplicates > duplicates_before and released > released_before

    await eventually(cancellations_handled, message="the repeated cancellations were not handled")

    async def money_and_stock_add_up() -> bool:
        for order_id in ids:
            [payment] = await saga.payments_for(order_id)
            assert payment["status"] in {"cancelled", "refunded", "failed"}, payment
            order = await saga.order(order_id)
            assert (order["status"], order["failure_reason"]) == ("failed", "timeout")
            assert (await saga.reservation(order_id) or {}).get("status") == "released"
        [never] = await saga.payments_for(never_charged["id"])
        assert (never["status"], never["transaction_id"]) == ("cancelled", None), "charged after its cancellation"
        return figures_of(await saga.stock(product_id)) == (10, 0, 0, 10)

    await stays(money_and_stock_add_up, duration=1.0, message="money or stock drifted after payment returned")


async def _payment_in(saga: Saga, order_id: int, status: str) -> dict[str, Any] | None:
    payments = await saga.payments_for(order_id)
    assert len(payments) <= 1, f"order {order_id} has more than one payment: {payments}"
    return payments[0] if payments and payments[0]["status"] == status else None


# --- Duplicates ---------------------------------------------------------------------------------


async def test_duplicate_saga_events_change_nothing(saga: Saga, management: Management) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)
    taps = {
        exchange: f"test_tap_{exchange}_{secrets.token_hex(4)}"
        for exchange in ("stock_reserved", "payment_completed", "payment_failed")
    }
    for exchange, tap in taps.items():
        await management.tap(exchange, tap)
    try:
        paid = await saga.create_order(product_id, 2, "succeed")
        declined = await saga.create_order(product_id, 3, "fail")
        refused = await saga.create_order(product_id, 50, "succeed")
        await saga.settled(paid["id"], steps=3)
        await saga.settled(declined["id"], steps=4)
        await saga.settled(refused["id"], steps=2)
        await stock_becomes(saga, product_id, (8, 0, 2, 10))

        captured: dict[tuple[str, int], dict[str, Any]] = {}

        async def all_captured() -> bool:
            for tap in taps.values():
                for message in await management.take(tap, count=500):
                    body = body_of(message)
                    if body.get("order_id") in (paid["id"], declined["id"]):
                        captured[(body["event_type"], body["order_id"])] = message
            return len(captured) == 4

        await eventually(all_captured, message="the saga's events were not seen on their exchanges")
        stock_reserved_paid = captured[("StockReserved", paid["id"])]
        stock_reserved_declined = captured[("StockReserved", declined["id"])]
        payment_completed = captured[("PaymentCompleted", paid["id"])]
        payment_failed = captured[("PaymentFailed", declined["id"])]

        async def snapshot() -> Any:
            order_ids = (paid["id"], declined["id"], refused["id"])
            return (
                [await saga.order(order_id) for order_id in order_ids],
                [await saga.reservation(order_id) for order_id in order_ids],
                [await saga.payments_for(order_id) for order_id in order_ids],
                await saga.stock(product_id),
            )

        before = await snapshot()

        # Exact duplicates: the same messages again, same event ids.
        exact = [
            ("paymentservice", topology.STOCK_RESERVED, stock_reserved_paid),
            ("paymentservice", topology.STOCK_RESERVED, stock_reserved_declined),
            ("orderservice", topology.ORDER_STOCK_RESERVED, stock_reserved_paid),
            ("inventoryservice", topology.INVENTORY_PAYMENT_COMPLETED, payment_completed),
            ("orderservice", topology.ORDER_PAYMENT_COMPLETED, payment_completed),
            ("paymentservice", topology.PAYMENT_COMPLETED_AUDIT, payment_completed),
            ("inventoryservice", topology.INVENTORY_PAYMENT_FAILED, payment_failed),
            ("orderservice", topology.ORDER_PAYMENT_FAILED, payment_failed),
        ]
        # The same facts told again as new events (a participant that re-published): new event ids.
        order_created_again = {
            "event_type": "OrderCreated",
            "occurred_at": "2026-01-01T00:00:00Z",
            "correlation_id": "duplicate-test",
            "order_id": paid["id"],
            "product_id": product_id,
            "quantity": 2,
            "payment_behaviour": "succeed",
        }
        refusal_again = {
            "event_type": "StockReservationFailed",
            "occurred_at": "2026-01-01T00:00:00Z",
            "correlation_id": "duplicate-test",
            "order_id": refused["id"],
            "product_id": product_id,
            "quantity": 50,
            "reason": "insufficient_stock",
            "available": 8,
        }
        retold = [
            ("inventoryservice", topology.ORDER_CREATED, order_created_again),
            (
                "inventoryservice",
                topology.ORDER_CREATED,
                {**order_created_again, "order_id": refused["id"], "quantity": 50},
            ),
            ("paymentservice", topology.STOCK_RESERVED, body_of(stock_reserved_paid)),
            ("inventoryservice", topology.INVENTORY_PAYMENT_COMPLETED, body_of(payment_completed)),
            ("orderservice", topology.ORDER_PAYMENT_COMPLETED, body_of(payment_completed)),
            ("inventoryservice", topology.INVENTORY_PAYMENT_FAILED, body_of(payment_failed)),
            ("orderservice", topology.ORDER_PAYMENT_FAILED, body_of(payment_failed)),
            ("orderservice", topology.ORDER_STOCK_RESERVATION_FAILED, refusal_again),
        ]
        expected: dict[tuple[str, str, str], float] = {}
        for service, queue, _ in exact:
            key = (service, queue.name, "duplicate")
            expected[key] = expected.get(key, await saga.consumed(service, queue.name, "duplicate")) + 1
        for service, queue, _ in retold:
            key = (service, queue.name, "acked")
            expected[key] = expected.get(key, await saga.consumed(service, queue.name, "acked")) + 1

        for _, queue, message in exact:
            await management.republish(message, queue.name)
        for _, queue, body in retold:
            event_id = str(uuid.uuid4())
            await management.publish(queue.name, json.dumps({**body, "event_id": event_id}), {"message_id": event_id})

        async def all_handled() -> bool:
            for (service, queue_name, outcome), count in expected.items():
                if await saga.consumed(service, queue_name, outcome) < count:
                    return False
            return True

        await eventually(all_handled, timeout=20, message="the injected events were not all handled")

        async def unchanged() -> bool:
            return await snapshot() == before

        await stays(unchanged, duration=1.0, message="a duplicate saga event changed something")
        assert figures_of(before[3]) == (8, 0, 2, 10)
    finally:
        for tap in taps.values():
            await management.delete_queue(tap)


# --- Concurrency --------------------------------------------------------------------------------


async def test_concurrent_orders_never_oversell_and_every_product_adds_up(saga: Saga) -> None:
    rng = random.Random(20261126)
    initial = {unique_product_id(): 40, unique_product_id(): 60, unique_product_id(): 400}
    for product_id, available in initial.items():
        await saga.set_stock(product_id, available)
    plan = [
        (rng.choice(list(initial)), rng.randint(1, 3), rng.choice(["succeed", "succeed", "fail", None]))
        for _ in range(200)
    ]

    accepted = await asyncio.gather(*(saga.create_order(*order) for order in plan))
    ids = {order["id"] for order in accepted}
    assert len(ids) == 200

    async def all_settled() -> list[dict[str, Any]] | None:
        listed = [order for product_id in initial for order in await saga.orders_of_product(product_id)]
        mine = [order for order in listed if order["id"] in ids]
        assert len(mine) == 200
        return mine if all(order["status"] in ("completed", "failed") for order in mine) else None

    orders = await eventually(all_settled, timeout=90, interval=0.5, message="not every order settled")

    reasons = {order["failure_reason"] for order in orders if order["status"] == "failed"}
    assert any(order["status"] == "completed" for order in orders)
    assert {"payment_declined", "insufficient_stock"} <= reasons, reasons
    for product_id, stocked in initial.items():
        sold = sum(
            order["quantity"]
            for order in orders
            if order["product_id"] == product_id and order["status"] == "completed"
        )
        assert sold <= stocked
        await stock_becomes(saga, product_id, (stocked - sold, 0, sold, stocked))

    async def payments_of(order: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return order, await saga.payments_for(order["id"])

    for order, payments in await asyncio.gather(*(payments_of(order) for order in orders)):
        charged = [payment for payment in payments if payment["status"] == "completed"]
        if order["status"] == "completed":
            assert len(charged) == 1, (order, payments)
            assert charged[0]["amount"] == f"{order['quantity'] * 10}.00"
        else:
            assert charged == [], (order, payments)
        if order["failure_reason"] == "insufficient_stock":
            assert payments == [], "a refused order reached the payment service"
