"""The saga's message contract: who hears what, and that the events carry what each step needs."""

from __future__ import annotations

import json

from common import topology
from common.events import (
    OrderCancelled,
    PaymentCompleted,
    PaymentFailed,
    PaymentInitiated,
    PaymentRefunded,
    StockReleased,
    StockReservationFailed,
    StockReserved,
)


def consumers_of(event: type) -> set[tuple[str, str]]:
    route = topology.route_for(event)
    if route.exchange.is_default:
        queues = [queue for queue in topology.QUEUES if queue.exchange.is_default and queue.name == route.routing_key]
    else:
        queues = [queue for queue in topology.QUEUES if queue.exchange == route.exchange]
    return {(queue.consumer, queue.name) for queue in queues}


def test_each_saga_fact_reaches_every_participant_that_acts_on_it() -> None:
    assert consumers_of(StockReserved) == {
        ("paymentservice", "stock_reserved_queue"),
        ("orderservice", "order_stock_reserved_queue"),
    }
    assert consumers_of(PaymentCompleted) == {
        ("paymentservice", "payment_completed_queue"),
        ("inventoryservice", "inventory_payment_completed_queue"),
        ("orderservice", "order_payment_completed_queue"),
    }
    assert consumers_of(PaymentFailed) == {
        ("inventoryservice", "inventory_payment_failed_queue"),
        ("orderservice", "order_payment_failed_queue"),
    }
    assert consumers_of(OrderCancelled) == {
        ("inventoryservice", "inventory_order_cancelled_queue"),
        ("paymentservice", "payment_order_cancelled_queue"),
    }
    assert consumers_of(StockReservationFailed) == {("orderservice", "order_stock_reservation_failed_queue")}
    assert consumers_of(StockReleased) == {("orderservice", "order_stock_released_queue")}
    assert consumers_of(PaymentRefunded) == {("orderservice", "order_payment_refunded_queue")}


def test_the_design_documents_saga_queues_are_kept() -> None:
    assert topology.ORDER_CREATED.name == "order_created_queue"
    assert topology.STOCK_RESERVED.name == "stock_reserved_queue"
    assert topology.route_for(PaymentFailed).exchange.name == "payment_failed"


def test_compensation_events_carry_what_compensation_needs() -> None:
    failed = PaymentFailed(payment_id="pay_1", order_id=7, product_id=3, quantity=2, reason="payment_declined")
    cancelled = OrderCancelled(order_id=7, product_id=3, quantity=2, reason="timeout")
    for event in (failed, cancelled):
        payload = json.loads(event.model_dump_json())
        assert {payload["order_id"], payload["product_id"], payload["quantity"]} == {7, 3, 2}


def test_payment_initiated_without_behaviour_still_reads() -> None:
    """Older publishers did not send `payment_behaviour`: their events still validate."""
    payload = json.loads(PaymentInitiated(payment_id="pay_1", amount="10.00", currency="USD").model_dump_json())
    del payload["payment_behaviour"]
    assert PaymentInitiated.model_validate(payload).payment_behaviour is None
