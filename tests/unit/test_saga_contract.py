"""The saga's message contract: who hears what, and that the events carry what each step needs."""

from __future__ import annotations

import json

from common import topology
from common.events import (
    Event,
    OrderCancelled,
    PaymentCompleted,
    PaymentFailed,
    PaymentInitiated,
    PaymentRefunded,
    StockReleased,
    StockReservationFailed,
    StockReserved,
)


def consumers_of(event: Event) -> set[tuple[str, str]]:
    return {(queue.consumer, queue.name) for queue in topology.queues_reached(topology.route_for(event))}


ORDER = {"order_id": 7, "product_id": 3, "quantity": 2}
SAGA_PAYMENT = PaymentCompleted(payment_id="pay_1", transaction_id="txn_1", amount="20.00", currency="USD", **ORDER)


def test_each_saga_fact_reaches_every_participant_that_acts_on_it() -> None:
    assert consumers_of(StockReserved(**ORDER)) == {
        ("paymentservice", "stock_reserved_queue"),
        ("orderservice", "order_stock_reserved_queue"),
    }
    assert consumers_of(SAGA_PAYMENT) == {
        ("paymentservice", "payment_completed_queue"),
        ("inventoryservice", "inventory_payment_completed_queue"),
        ("orderservice", "order_payment_completed_queue"),
    }
    assert consumers_of(PaymentFailed(payment_id="pay_1", reason="payment_declined", **ORDER)) == {
        ("inventoryservice", "inventory_payment_failed_queue"),
        ("orderservice", "order_payment_failed_queue"),
    }
    assert consumers_of(OrderCancelled(reason="timeout", **ORDER)) == {
        ("inventoryservice", "inventory_order_cancelled_queue"),
        ("paymentservice", "payment_order_cancelled_queue"),
    }
    assert consumers_of(StockReservationFailed(reason="insufficient_stock", **ORDER)) == {
        ("orderservice", "order_stock_reservation_failed_queue")
    }
    assert consumers_of(StockReleased(reason="timeout", **ORDER)) == {("orderservice", "order_stock_released_queue")}
    refund = PaymentRefunded(
        payment_id="pay_1", refund_id="ref_1", amount="20.00", currency="USD", reason="timeout", **ORDER
    )
    assert consumers_of(refund) == {("orderservice", "order_payment_refunded_queue")}


def test_a_payment_outside_the_saga_reaches_the_audit_trail_alone() -> None:
    standalone = SAGA_PAYMENT.model_copy(update={"order_id": None, "product_id": None, "quantity": None})
    route = topology.route_for(standalone)
    assert (route.exchange.name, route.routing_key) == ("", "payment_completed_queue"), "as the design document has it"
    assert consumers_of(standalone) == {("paymentservice", "payment_completed_queue")}


def test_the_design_documents_saga_queues_are_kept() -> None:
    assert topology.ORDER_CREATED.name == "order_created_queue"
    assert topology.STOCK_RESERVED.name == "stock_reserved_queue"
    assert {route.exchange.name for route in topology.routes_of(PaymentFailed)} == {"payment_failed"}


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
