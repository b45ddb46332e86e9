import functools
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import bindparam, insert, select

from common.events import CurrencyCode, PaymentBehaviour, PaymentInitiated
from common.inputs import PlainInt, StorableText
from common.service import CALL_FAILED_RESPONSES, UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement
from paymentservice.gateway import new_payment_id
from paymentservice.tables import payment_audit, payments

router = APIRouter(tags=["payments"])

MAX_AMOUNT = Decimal("1000000.00")
MAX_PAGE = 500
ACCEPTED_MESSAGE = "Payment initiated successfully. Processing asynchronously."


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class ProcessPaymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Annotated[Decimal, Field(gt=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)] = Field(
        description=f"Positive, at most {MAX_AMOUNT}, with at most two decimals.", examples=[100.0]
    )
    currency: Annotated[CurrencyCode, BeforeValidator(_upper)] = Field(
        description="A three-letter currency code (ISO 4217 style; lower case is accepted).", examples=["USD"]
    )
    payment_behaviour: PaymentBehaviour | None = Field(
        default=None,
        description="For demos and tests: force the simulated gateway to approve or decline. "
        "Without it, PAYMENT_FAILURE_RATE decides (0 by default: every payment completes).",
    )


class PaymentAccepted(BaseModel):
    payment_id: str = Field(examples=["pay_3f2a9c1b7d4e8f60a1b2c3d4"])
    status: Literal["processing"] = "processing"
    message: str = Field(examples=[ACCEPTED_MESSAGE])


class Payment(BaseModel):
    payment_id: str = Field(examples=["pay_3f2a9c1b7d4e8f60a1b2c3d4"])
    status: Literal["processing", "completed", "failed", "cancelled", "refunded"] = Field(
        description="`processing` until the gateway answered; then `completed` (with `transaction_id`) or "
        "`failed` (with `failure_reason`). A saga charge may also be `cancelled` (its order timed out before it "
        "was charged: nothing was taken) or `refunded` (charged, then refunded because the order timed out)."
    )
    amount: Decimal = Field(examples=["100.00"])
    currency: str = Field(examples=["USD"])
    transaction_id: str | None = Field(default=None, examples=["txn_9a8b7c6d5e4f3a2b1c0d9e8f"])
    failure_reason: str | None = Field(default=None, examples=[None])
    order_id: int | None = Field(default=None, description="The saga order this payment charges, if any.")
    refund_id: str | None = None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None = None
    refunded_at: datetime | None = None
    audited_at: datetime | None = Field(
        default=None, description="When the audit trail recorded the `PaymentCompleted` announcement."
    )


_PAYMENT_COLUMNS = (
    payments.c.payment_id,
    payments.c.status,
    payments.c.amount,
    payments.c.currency,
    payments.c.transaction_id,
    payments.c.failure_reason,
    payments.c.order_id,
    payments.c.refund_id,
    payments.c.created_at,
    payments.c.updated_at,
    payments.c.settled_at,
    payments.c.refunded_at,
    payment_audit.c.recorded_at.label("audited_at"),
)
_WITH_AUDIT = payments.outerjoin(payment_audit, payment_audit.c.payment_id == payments.c.payment_id)
ACCEPT_PAYMENT = Statement(
    insert(payments).values(
        payment_id=bindparam("payment_id"),
        amount=bindparam("amount"),
        currency=bindparam("currency"),
        status="processing",
        payment_behaviour=bindparam("payment_behaviour"),
    )
)
READ_PAYMENT = Statement(
    select(*_PAYMENT_COLUMNS).select_from(_WITH_AUDIT).where(payments.c.payment_id == bindparam("payment_id"))
)


@functools.cache
def payments_query(for_one_order: bool) -> Statement:
    query = select(*_PAYMENT_COLUMNS).select_from(_WITH_AUDIT).order_by(payments.c.created_at.desc())
    if for_one_order:
        query = query.where(payments.c.order_id == bindparam("order_id"))
    return Statement(query.limit(bindparam("limit")))


@router.post(
    "/process_payment",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PaymentAccepted | Payment,  # a JSONResponse (the synchronous fleet's failures) passes as it is
    summary="Accept a payment; the (slow) gateway is called in the background",
    description="Returns at once with a `payment_id`; poll `GET /payments/{payment_id}` for the outcome. "
    "The synchronous fleet answers after the gateway: 200 with the completed payment, or 402 if it failed.",
    responses={
        200: {"model": Payment, "description": "Synchronous fleet: the payment, completed by the gateway."},
        402: {"model": ErrorResponse, "description": "Synchronous fleet: the gateway declined the payment."},
        **UNAVAILABLE_RESPONSE,
        **CALL_FAILED_RESPONSES,
    },
)
async def process_payment(
    request: ProcessPaymentRequest, response: Response, runtime: RuntimeDep
) -> PaymentAccepted | Payment | JSONResponse:
    payment_id = new_payment_id()
    async with runtime.outbox.transaction() as unit:
        await unit.connection.execute(
            ACCEPT_PAYMENT,
            payment_id=payment_id,
            amount=request.amount,
            currency=request.currency,
            payment_behaviour=request.payment_behaviour,
        )
        unit.publish(
            PaymentInitiated(
                payment_id=payment_id,
                amount=request.amount,
                currency=request.currency,
                payment_behaviour=request.payment_behaviour,
            )
        )
    if runtime.synchronous:
        payment = await read_payment(runtime, payment_id)
        if payment.status != "completed":
            detail = f"payment {payment_id} {payment.status}: {payment.failure_reason or 'no reason given'}"
            return JSONResponse(status_code=status.HTTP_402_PAYMENT_REQUIRED, content={"detail": detail})
        response.status_code = status.HTTP_200_OK
        return payment
    return PaymentAccepted(payment_id=payment_id, message=ACCEPTED_MESSAGE)


@router.get(
    "/payments/{payment_id}",
    summary="A payment's status: processing, then completed or failed",
    responses={404: {"model": ErrorResponse, "description": "No such payment."}, **UNAVAILABLE_RESPONSE},
)
async def read_payment(
    runtime: RuntimeDep,
    payment_id: Annotated[StorableText, Path(max_length=100, examples=["pay_3f2a9c1b7d4e8f60a1b2c3d4"])],
) -> Payment:
    row = await runtime.database.fetchrow(READ_PAYMENT, payment_id=payment_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"payment {payment_id} not found")
    return Payment.model_validate(dict(row))


@router.get(
    "/payments",
    summary="Payments, newest first (optionally those charging one saga order)",
    responses=UNAVAILABLE_RESPONSE,
)
async def list_payments(
    runtime: RuntimeDep,
    order_id: PlainInt | None = Query(default=None, ge=1, le=2**31 - 1, description="Only this order's payment."),
    limit: PlainInt = Query(default=100, ge=1, le=MAX_PAGE),
) -> list[Payment]:
    if order_id is None:
        rows = await runtime.database.fetch(payments_query(for_one_order=False), limit=limit)
    else:
        rows = await runtime.database.fetch(payments_query(for_one_order=True), limit=limit, order_id=order_id)
    return [Payment.model_validate(dict(row)) for row in rows]
