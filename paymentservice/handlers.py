"""The payment worker: Scenario 2's background payments and the saga's charge, refund and cancellation.

The gateway's delay is spent before any transaction, so a payment waiting for it holds a delivery
and nothing else. What a payment becomes is decided in one statement on `payments`, whose
`order_id` is unique: a saga order is charged at most once, and a cancellation that arrives first
leaves a `cancelled` row that a late charge cannot get past.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.consumer import MessageContext, Reject
from common.events import (
    OrderCancelled,
    PaymentCompleted,
    PaymentFailed,
    PaymentInitiated,
    PaymentRefunded,
    StockReserved,
)
from common.metrics import SAGA_COMPENSATIONS
from common.sql import Statement
from paymentservice.gateway import DECLINED, approves, new_payment_id, new_refund_id, new_transaction_id, order_key
from paymentservice.metrics import PAYMENTS_SETTLED
from paymentservice.settings import Settings
from paymentservice.tables import payment_audit, payments

log = logging.getLogger(__name__)

_PAYMENT = bindparam("payment_id")
SETTLE = Statement(
    update(payments)
    .where(payments.c.payment_id == _PAYMENT, payments.c.status == "processing")
    .values(
        status=bindparam("status"),
        transaction_id=bindparam("transaction_id"),
        failure_reason=bindparam("failure_reason"),
        settled_at=func.now(),
        updated_at=func.now(),
    )
    .returning(payments.c.amount, payments.c.currency)
)
PAYMENT_STATUS = Statement(select(payments.c.status).where(payments.c.payment_id == _PAYMENT))
_AUDIT_COLUMNS = ("payment_id", "transaction_id", "amount", "currency", "order_id", "event_id", "completed_at")
RECORD_AUDIT = Statement(
    pg_insert(payment_audit)
    .values({column: bindparam(column, type_=payment_audit.c[column].type) for column in _AUDIT_COLUMNS})
    .on_conflict_do_nothing(index_elements=["payment_id"])
)
# The charge takes effect with this row; a row already there for the order means it was cancelled
# (timeout) or charged already, and nothing more may be taken.
_CHARGE_COLUMNS = (
    "payment_id",
    "order_id",
    "product_id",
    "quantity",
    "amount",
    "currency",
    "status",
    "payment_behaviour",
    "transaction_id",
    "failure_reason",
)
CHARGE = Statement(
    pg_insert(payments)
    .values({column: bindparam(column, type_=payments.c[column].type) for column in _CHARGE_COLUMNS})
    .values(settled_at=func.now())
    .on_conflict_do_nothing(index_elements=["order_id"])
    .returning(payments.c.payment_id)
)
_TOMBSTONE_COLUMNS = ("payment_id", "order_id", "product_id", "quantity", "amount", "currency", "failure_reason")
NEVER_CHARGE = Statement(
    pg_insert(payments)
    .values({column: bindparam(column, type_=payments.c[column].type) for column in _TOMBSTONE_COLUMNS})
    .values(status="cancelled")
    .on_conflict_do_nothing(index_elements=["order_id"])
    .returning(payments.c.payment_id)
)
REFUND = Statement(
    update(payments)
    .where(payments.c.order_id == bindparam("order_id"), payments.c.status == "completed")
    .values(
        status="refunded",
        refund_id=bindparam("refund_id"),
        failure_reason=bindparam("failure_reason"),
        refunded_at=func.now(),
        updated_at=func.now(),
    )
    .returning(
        payments.c.payment_id,
        payments.c.refund_id,
        payments.c.amount,
        payments.c.currency,
        payments.c.product_id,
        payments.c.quantity,
    )
)


def _settings(ctx: MessageContext[Any]) -> Settings:
    settings = ctx.settings
    if not isinstance(settings, Settings):
        raise TypeError("the payment handlers run with paymentservice.settings.Settings")
    return settings


async def settle_payment(event: PaymentInitiated, ctx: MessageContext[PaymentInitiated]) -> None:
    """Scenario 2: wait for the gateway, record its answer, announce a completed payment."""
    settings = _settings(ctx)
    await asyncio.sleep(settings.payment_delay_s)
    approved = approves(event.payment_id, event.payment_behaviour, settings.payment_failure_rate)
    transaction_id = new_transaction_id() if approved else None
    async with ctx.transaction() as unit:
        settled = await unit.connection.fetchrow(
            SETTLE,
            payment_id=event.payment_id,
            status="completed" if approved else "failed",
            transaction_id=transaction_id,
            failure_reason=None if approved else DECLINED,
        )
        if settled is None:
            known = await unit.connection.fetchval(PAYMENT_STATUS, payment_id=event.payment_id)
            if known is None:
                raise Reject(f"payment {event.payment_id} was never accepted by this service")
            log.info("payment %s is already %s; nothing to do", event.payment_id, known)
            return
        if transaction_id is not None:
            unit.publish(
                PaymentCompleted(
                    payment_id=event.payment_id,
                    transaction_id=transaction_id,
                    amount=settled["amount"],
                    currency=settled["currency"],
                )
            )
    PAYMENTS_SETTLED.labels(flow="standalone", status="completed" if approved else "failed").inc()


async def record_audit(event: PaymentCompleted, ctx: MessageContext[PaymentCompleted]) -> None:
    """The audit trail: one record per settled payment, as announced on the `payment_completed` fanout."""
    async with ctx.transaction() as unit:
        await unit.connection.execute(
            RECORD_AUDIT,
            payment_id=event.payment_id,
            transaction_id=event.transaction_id,
            amount=event.amount,
            currency=event.currency,
            order_id=event.order_id,
            event_id=str(event.event_id),
            completed_at=event.occurred_at,
        )


async def charge_order(event: StockReserved, ctx: MessageContext[StockReserved]) -> None:
    """The saga's payment step: charge the order (quantity x SAGA_UNIT_PRICE), then announce the outcome."""
    settings = _settings(ctx)
    await asyncio.sleep(settings.saga_payment_delay_s)
    approved = approves(order_key(event.order_id), event.payment_behaviour, settings.saga_payment_failure_rate)
    payment_id = new_payment_id()
    transaction_id = new_transaction_id() if approved else None
    amount = settings.saga_unit_price * event.quantity
    async with ctx.transaction() as unit:
        created = await unit.connection.fetchval(
            CHARGE,
            payment_id=payment_id,
            order_id=event.order_id,
            product_id=event.product_id,
            quantity=event.quantity,
            amount=amount,
            currency=settings.saga_currency,
            status="completed" if approved else "failed",
            payment_behaviour=event.payment_behaviour,
            transaction_id=transaction_id,
            failure_reason=None if approved else DECLINED,
        )
        if created is None:
            log.info("order %d already has a payment (or was cancelled): not charging it", event.order_id)
            return
        if transaction_id is not None:
            unit.publish(
                PaymentCompleted(
                    payment_id=payment_id,
                    transaction_id=transaction_id,
                    amount=amount,
                    currency=settings.saga_currency,
                    order_id=event.order_id,
                    product_id=event.product_id,
                    quantity=event.quantity,
                )
            )
        else:
            unit.publish(
                PaymentFailed(
                    payment_id=payment_id,
                    order_id=event.order_id,
                    product_id=event.product_id,
                    quantity=event.quantity,
                    reason=DECLINED,
                )
            )
    PAYMENTS_SETTLED.labels(flow="saga", status="completed" if approved else "failed").inc()


async def cancel_order_payment(event: OrderCancelled, ctx: MessageContext[OrderCancelled]) -> None:
    """The saga gave up on the order: make sure it is never charged, or refund a charge that raced it."""
    settings = _settings(ctx)
    reason = f"order_cancelled: {event.reason}"
    async with ctx.transaction() as unit:
        tombstone = await unit.connection.fetchval(
            NEVER_CHARGE,
            payment_id=new_payment_id(),
            order_id=event.order_id,
            product_id=event.product_id,
            quantity=event.quantity,
            amount=settings.saga_unit_price * event.quantity,
            currency=settings.saga_currency,
            failure_reason=reason,
        )
        if tombstone is not None:
            log.info("order %d cancelled before it was charged: it never will be", event.order_id)
            return
        refunded = await unit.connection.fetchrow(
            REFUND, order_id=event.order_id, refund_id=new_refund_id(), failure_reason=reason
        )
        if refunded is None:
            return  # declined, already cancelled or already refunded: no money to give back
        log.info("order %d was charged after it was cancelled: refunded %s", event.order_id, refunded["payment_id"])
        unit.publish(
            PaymentRefunded(
                payment_id=refunded["payment_id"],
                refund_id=refunded["refund_id"],
                order_id=event.order_id,
                product_id=refunded["product_id"],
                quantity=refunded["quantity"],
                amount=refunded["amount"],
                currency=refunded["currency"],
                reason=event.reason,
            )
        )
    SAGA_COMPENSATIONS.labels(action="refund_charge").inc()
