"""Inventory's saga branches that only a race reaches (inventoryservice/handlers.py, `cancel_order_stock`
and `reserve_stock`), end to end with the fleet's processes:

- sale reversal: the order timed out, yet its late payment reached inventory before its cancellation, so
  the reservation had become a sale; the cancellation turns it `sold -> returned` and gives the stock back;
- tombstone: the order's cancellation reached inventory before its OrderCreated; inventory records the
  order as `cancelled`, and the late OrderCreated reserves nothing.

Races are arranged as test_scenario5_saga_faults.py arranges them: participants stopped so their
queues hold the saga's messages, messages taken out and published again in the order under test, and
saga events published into the fleet's exchanges. Stock figures are read from inventory's HTTP API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from common import topology
from common.events import OrderCancelled
from tests.support.fleet import Fleet
from tests.support.impersonator import Impersonator
from tests.support.rabbitmq import Management
from tests.support.saga import Saga, body_of, steps_of, unique_product_id
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e

SHORT_SAGA_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
async def short_saga_timeout(fleet: Fleet) -> AsyncIterator[float]:
    """The order service with a short saga timeout for this module's tests, then as it was."""
    await fleet.restart("orderservice", {"SAGA_TIMEOUT_S": str(SHORT_SAGA_TIMEOUT_S)})
    try:
        yield SHORT_SAGA_TIMEOUT_S
    finally:
        await fleet.restart("orderservice")


def figures_of(stock: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """(available, reserved, sold, total), with the stock identity checked on the way."""
    assert stock is not None
    assert min(stock["available"], stock["reserved"], stock["sold"]) >= 0, stock
    assert stock["available"] + stock["reserved"] + stock["sold"] == stock["total"], stock
    return stock["available"], stock["reserved"], stock["sold"], stock["total"]


async def stock_becomes(saga: Saga, product_id: int, expected: tuple[int, int, int, int]) -> None:
    async def probe() -> bool:
        return figures_of(await saga.stock(product_id)) == expected

    await eventually(probe, timeout=30, message=f"product {product_id} never showed {expected}")


async def reservation_becomes(saga: Saga, order_id: int, status: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        reservation = await saga.reservation(order_id)
        return reservation if reservation is not None and reservation["status"] == status else None

    return await eventually(probe, timeout=30, message=f"the reservation of order {order_id} never became {status}")


async def take_message_of(management: Management, queue: str, order_id: int) -> dict[str, Any]:
    """Take the message about `order_id` out of `queue` (as if it were still on its way); any other
    message taken on the way is put back."""

    async def probe() -> dict[str, Any] | None:
        found = None
        for message in await management.take(queue, count=100):
            if body_of(message).get("order_id") == order_id and found is None:
                found = message
            else:
                await management.republish(message, queue)
        return found

    return await eventually(probe, timeout=30, message=f"{queue} never held the message of order {order_id}")


async def payment_becomes(saga: Saga, order_id: int, status: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        payments = await saga.payments_for(order_id)
        assert len(payments) <= 1, f"order {order_id} has more than one payment: {payments}"
        return payments[0] if payments and payments[0]["status"] == status else None

    return await eventually(probe, timeout=30, message=f"the payment of order {order_id} never became {status}")


async def cancellation_told_again_changes_nothing(
    saga: Saga, publisher: Impersonator, cancellation: dict[str, Any], product_id: int
) -> None:
    """The same cancellation as a new event (a new id), into the `order_cancelled` exchange: both
    participants handle it, and neither stock nor money moves."""
    before = (await saga.stock(product_id), await saga.reservation(cancellation["order_id"]))
    payments_before = await saga.payments_for(cancellation["order_id"])
    handled = {
        ("inventoryservice", topology.INVENTORY_ORDER_CANCELLED.name): await saga.consumed(
            "inventoryservice", topology.INVENTORY_ORDER_CANCELLED.name, "acked"
        ),
        ("paymentservice", topology.PAYMENT_ORDER_CANCELLED.name): await saga.consumed(
            "paymentservice", topology.PAYMENT_ORDER_CANCELLED.name, "acked"
        ),
    }
    fields = {key: cancellation[key] for key in ("order_id", "product_id", "quantity", "reason", "correlation_id")}
    await publisher.publish(OrderCancelled(**fields))

    async def both_handled() -> bool:
        for (service, queue), count in handled.items():
            if await saga.consumed(service, queue, "acked") <= count:
                return False
        return True

    await eventually(both_handled, message="the repeated cancellation was not handled by both participants")

    async def unchanged() -> bool:
        now = (await saga.stock(product_id), await saga.reservation(cancellation["order_id"]))
        return now == before and await saga.payments_for(cancellation["order_id"]) == payments_before

    await stays(unchanged, duration=1.0, message="a repeated cancellation moved stock or money")


async def test_a_sale_whose_order_was_cancelled_is_reversed_and_its_stock_returned(
    saga: Saga, fleet: Fleet, management: Management, publisher: Impersonator, short_saga_timeout: float
) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)
    await fleet.stop("paymentservice")
    try:
        order_id = (await saga.create_order(product_id, 2, "succeed"))["id"]
        await reservation_becomes(saga, order_id, "reserved")
        await stock_becomes(saga, product_id, (8, 2, 0, 10))

        # Inventory goes away too, and the order times out: its cancellation waits in both queues.
        await fleet.stop("inventoryservice")
        order = await saga.settled(order_id, timeout=short_saga_timeout + 20, steps=3)
        assert (order["status"], order["failure_reason"]) == ("failed", "timeout"), order
        to_inventory = await take_message_of(management, topology.INVENTORY_ORDER_CANCELLED.name, order_id)
        to_payment = await take_message_of(management, topology.PAYMENT_ORDER_CANCELLED.name, order_id)

        # The payment service comes back and charges the order late; inventory hears of it first.
        await fleet.start("paymentservice")
        charged = await payment_becomes(saga, order_id, "completed")
    finally:
        await fleet.start("paymentservice")
        await fleet.start("inventoryservice")

    # The late charge turns the reservation into a sale.
    await reservation_becomes(saga, order_id, "sold")
    await stock_becomes(saga, product_id, (8, 0, 2, 10))

    # Then the cancellation arrives: the sale is reversed (sold -> returned), the stock is back.
    await management.republish(to_inventory, topology.INVENTORY_ORDER_CANCELLED.name)
    returned = await reservation_becomes(saga, order_id, "returned")
    assert (returned["quantity"], returned["reason"]) == (2, "timeout"), returned
    await stock_becomes(saga, product_id, (10, 0, 0, 10))

    # The payment service refunds the charge that raced the cancellation: money adds up too.
    await management.republish(to_payment, topology.PAYMENT_ORDER_CANCELLED.name)
    refunded = await payment_becomes(saga, order_id, "refunded")
    assert refunded["transaction_id"] == charged["transaction_id"]

    order = await saga.settled(order_id, steps=6)
    assert (order["status"], order["failure_reason"]) == ("failed", "timeout"), order
    assert {"payment_completed", "stock_released", "payment_refunded"} <= set(steps_of(order)), steps_of(order)
    [released] = [step for step in order["timeline"] if step["step"] == "stock_released"]
    assert released["detail"].startswith("sale reversed: 2 of product"), released

    # The same cancellation told again returns nothing more (a returned sale is not returned twice).
    await cancellation_told_again_changes_nothing(saga, publisher, body_of(to_inventory), product_id)
    assert figures_of(await saga.stock(product_id)) == (10, 0, 0, 10)


async def test_an_order_cancelled_before_inventory_saw_it_reserves_nothing_when_its_order_created_arrives(
    saga: Saga, fleet: Fleet, management: Management, publisher: Impersonator, short_saga_timeout: float
) -> None:
    product_id = unique_product_id()
    await saga.set_stock(product_id, 10)
    await fleet.stop("inventoryservice")
    try:
        order_id = (await saga.create_order(product_id, 3, "succeed"))["id"]
        # Inventory is away, so nothing is reserved and the order times out.
        order = await saga.settled(order_id, timeout=short_saga_timeout + 20, steps=2)
        assert (order["status"], order["failure_reason"]) == ("failed", "timeout"), order
        # Its OrderCreated is still on its way: take it out, so the cancellation reaches inventory first.
        created = await take_message_of(management, topology.ORDER_CREATED.name, order_id)
    finally:
        await fleet.start("inventoryservice")

    # The cancellation leaves a tombstone: inventory knows the order, holds nothing for it.
    tombstone = await reservation_becomes(saga, order_id, "cancelled")
    assert (tombstone["product_id"], tombstone["quantity"], tombstone["reason"]) == (product_id, 3, "timeout")
    assert figures_of(await saga.stock(product_id)) == (10, 0, 0, 10)

    # The late OrderCreated arrives: it is handled, and reserves nothing.
    handled_before = await saga.consumed("inventoryservice", topology.ORDER_CREATED.name, "acked")
    await management.republish(created, topology.ORDER_CREATED.name)

    async def late_order_created_handled() -> bool:
        return await saga.consumed("inventoryservice", topology.ORDER_CREATED.name, "acked") > handled_before

    await eventually(late_order_created_handled, message="inventory did not handle the late OrderCreated")

    async def nothing_reserved() -> bool:
        reservation = await saga.reservation(order_id)
        return (
            reservation is not None
            and reservation["status"] == "cancelled"
            and figures_of(await saga.stock(product_id)) == (10, 0, 0, 10)
        )

    await stays(nothing_reserved, duration=1.0, message="the late OrderCreated reserved stock")

    # Nothing reached the payment service to charge: its own tombstone (never charge it) is all there is.
    payment = await payment_becomes(saga, order_id, "cancelled")
    assert payment["transaction_id"] is None, payment
    order = await saga.order(order_id)
    assert (order["status"], order["failure_reason"]) == ("failed", "timeout"), order
    assert sorted(steps_of(order)) == ["order_created", "order_timed_out"], steps_of(order)

    # The same cancellation told again: the tombstone stays, nothing moves.
    cancellation = {
        "order_id": order_id,
        "product_id": product_id,
        "quantity": 3,
        "reason": "timeout",
        "correlation_id": body_of(created)["correlation_id"],
    }
    await cancellation_told_again_changes_nothing(saga, publisher, cancellation, product_id)
