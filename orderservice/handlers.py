"""OrderService's side of the saga: each participant's event moves the order or adds a timeline step.

Every handler locks the order's row first, so the events of one order (and the timeout watch) apply
one at a time: an order leaves `pending` exactly once, and an outcome that arrives after that (a
payment that raced the timeout) is kept in the timeline without changing the status. The timeline
holds each kind of step once per order, so a duplicate event adds nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.consumer import MessageContext, Reject
from common.events import (
    Event,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    StockReleased,
    StockReservationFailed,
    StockReserved,
)
from common.sql import Connection, Statement
from common.topology import route_for
from orderservice.metrics import SAGA_DURATION
from orderservice.tables import order_steps, orders

log = logging.getLogger(__name__)

Outcome = Literal["completed", "failed"]

_ORDER = bindparam("order_id")
LOCK_ORDER = Statement(select(orders.c.status, orders.c.failure_reason).where(orders.c.id == _ORDER).with_for_update())
END_ORDER = Statement(
    update(orders)
    .where(orders.c.id == _ORDER)
    .values(status=bindparam("status"), failure_reason=bindparam("failure_reason"), updated_at=func.now())
    .returning(orders.c.created_at, orders.c.updated_at)
)
_STEP_COLUMNS = ("order_id", "step", "event_type", "event_id", "service", "detail", "occurred_at")
RECORD_STEP = Statement(
    pg_insert(order_steps)
    .values({column: bindparam(column, type_=order_steps.c[column].type) for column in _STEP_COLUMNS})
    .on_conflict_do_nothing(index_elements=["order_id", "step"])
)


def step_row(order_id: int, step: str, event: Event, detail: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "step": step,
        "event_type": event.event_type,
        "event_id": str(event.event_id),
        "service": route_for(event).publishers[0],
        "detail": detail,
        "occurred_at": event.occurred_at,
    }


def observe_saga(status: str, reason: str | None, created_at: datetime, ended_at: datetime) -> None:
    SAGA_DURATION.labels(status=status, reason=reason or "").observe(max(0.0, (ended_at - created_at).total_seconds()))


async def _lock_order(connection: Connection, order_id: int) -> tuple[str, str | None]:
    found = await connection.fetchrow(LOCK_ORDER, order_id=order_id)
    if found is None:
        raise Reject(f"order {order_id} was never created by this service")
    return found["status"], found["failure_reason"]


async def _apply(
    ctx: MessageContext[Any],
    *,
    order_id: int,
    step: str,
    detail: str,
    outcome: Outcome | None = None,
    failure_reason: str | None = None,
) -> None:
    ended = None
    async with ctx.transaction() as unit:
        status, current_reason = await _lock_order(unit.connection, order_id)
        if outcome is not None:
            if status == "pending":
                ended = await unit.connection.fetchrow(
                    END_ORDER, order_id=order_id, status=outcome, failure_reason=failure_reason
                )
                detail = f"{detail}; order {outcome}"
            else:
                late = f"{status} ({current_reason})" if current_reason else status
                detail = f"{detail}; arrived after the order had {late}: its status stays"
        await unit.connection.execute(RECORD_STEP, **step_row(order_id, step, ctx.event, detail))
    if ended is not None and outcome is not None:
        observe_saga(outcome, failure_reason, ended["created_at"], ended["updated_at"])


async def on_stock_reserved(event: StockReserved, ctx: MessageContext[StockReserved]) -> None:
    await _apply(
        ctx,
        order_id=event.order_id,
        step="stock_reserved",
        detail=f"{event.quantity} of product {event.product_id} reserved",
    )


async def on_stock_reservation_failed(
    event: StockReservationFailed, ctx: MessageContext[StockReservationFailed]
) -> None:
    if event.reason == "insufficient_stock" and event.available is not None:
        detail = f"{event.quantity} of product {event.product_id} requested, {event.available} available"
    elif event.reason == "unknown_product":
        detail = f"inventory has no stock for product {event.product_id}"
    else:
        detail = f"reservation refused: {event.reason}"
    await _apply(
        ctx,
        order_id=event.order_id,
        step="stock_reservation_failed",
        detail=f"{detail}; nothing was charged",
        outcome="failed",
        failure_reason=event.reason,
    )


async def on_payment_completed(event: PaymentCompleted, ctx: MessageContext[PaymentCompleted]) -> None:
    if event.order_id is None:
        return  # the topology routes only saga payments here; one without an order has none to complete
    await _apply(
        ctx,
        order_id=event.order_id,
        step="payment_completed",
        detail=f"charged {event.amount} {event.currency} (payment {event.payment_id}, "
        f"transaction {event.transaction_id})",
        outcome="completed",
    )


async def on_payment_failed(event: PaymentFailed, ctx: MessageContext[PaymentFailed]) -> None:
    await _apply(
        ctx,
        order_id=event.order_id,
        step="payment_failed",
        detail=f"payment {event.payment_id} failed: {event.reason}",
        outcome="failed",
        failure_reason=event.reason,
    )


async def on_stock_released(event: StockReleased, ctx: MessageContext[StockReleased]) -> None:
    what = "sale reversed" if event.sale_reversed else "reservation released"
    await _apply(
        ctx,
        order_id=event.order_id,
        step="stock_released",
        detail=f"{what}: {event.quantity} of product {event.product_id} back in stock ({event.reason})",
    )


async def on_payment_refunded(event: PaymentRefunded, ctx: MessageContext[PaymentRefunded]) -> None:
    await _apply(
        ctx,
        order_id=event.order_id,
        step="payment_refunded",
        detail=f"{event.amount} {event.currency} refunded (payment {event.payment_id}, refund {event.refund_id}): "
        f"the charge came after the order was cancelled ({event.reason})",
    )
