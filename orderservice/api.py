import functools
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Float, bindparam, func, insert, select

from common.correlation import current_correlation_id
from common.events import OrderCreated, PaymentBehaviour
from common.inputs import PlainInt
from common.service import CALL_FAILED_RESPONSES, UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement
from orderservice.tables import order_steps, orders
from orderservice.timeouts import order_settings

router = APIRouter(tags=["orders"])

MAX_QUANTITY = 1000
MAX_PAGE = 500
MAX_ID = 2**31 - 1
OrderStatus = Literal["pending", "completed", "failed"]


CREATE_ORDER = Statement(
    insert(orders)
    .values(
        product_id=bindparam("product_id"),
        quantity=bindparam("quantity"),
        payment_behaviour=bindparam("payment_behaviour"),
        correlation_id=bindparam("correlation_id"),
        created_event_id=bindparam("created_event_id"),
        deadline=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("timeout_s", type_=Float)),
    )
    .returning(orders.c.id)
)
READ_ORDER = Statement(select(orders).where(orders.c.id == bindparam("order_id")))
READ_STEPS = Statement(
    select(order_steps)
    .where(order_steps.c.order_id == bindparam("order_id"))
    .order_by(order_steps.c.occurred_at, order_steps.c.id)
)


@functools.cache
def orders_query(by_status: bool, by_product: bool) -> Statement:
    query = select(orders).order_by(orders.c.id.desc()).limit(bindparam("limit"))
    if by_status:
        query = query.where(orders.c.status == bindparam("status"))
    if by_product:
        query = query.where(orders.c.product_id == bindparam("product_id"))
    return Statement(query)


class CreateOrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: int = Field(strict=True, ge=1, le=MAX_ID, examples=[1])
    quantity: int = Field(strict=True, ge=1, le=MAX_QUANTITY, examples=[1])
    payment_behaviour: PaymentBehaviour | None = Field(
        default=None,
        description="For demos and tests: force the simulated payment to succeed or fail. Without it, "
        "SAGA_PAYMENT_FAILURE_RATE decides (1 by default: the payment fails and compensation runs, as in the "
        "design document's example).",
    )


class OrderAccepted(BaseModel):
    id: int = Field(examples=[456])
    product_id: int = Field(examples=[1])
    quantity: int = Field(examples=[1])
    status: Literal["pending"] = "pending"


class OrderSummary(BaseModel):
    id: int = Field(examples=[456])
    product_id: int = Field(examples=[1])
    quantity: int = Field(examples=[1])
    status: OrderStatus = Field(
        description="`pending` while the saga runs; `completed` once paid; `failed` with `failure_reason`."
    )
    failure_reason: str | None = Field(
        default=None,
        description="`insufficient_stock`, `unknown_product` (nothing was charged), `payment_declined` (the "
        "reservation is released), or `timeout` (not settled within SAGA_TIMEOUT_S: stock released, never "
        "charged or refunded).",
        examples=["payment_declined"],
    )
    payment_behaviour: PaymentBehaviour | None = None
    created_at: datetime
    updated_at: datetime


class SagaStep(BaseModel):
    step: str = Field(examples=["stock_reserved"])
    event_type: str = Field(examples=["StockReserved"])
    service: str = Field(description="The service that took the step.", examples=["inventoryservice"])
    at: datetime = Field(description="When the step happened (the event's `occurred_at`).")
    detail: str = Field(examples=["1 of product 1 reserved"])
    event_id: str


class Order(OrderSummary):
    timeline: list[SagaStep] = Field(description="The saga's steps as this service heard of them, in order.")


class FailedOrder(BaseModel):
    detail: str = Field(examples=["order 456 failed: payment_declined"])
    order: Order


# How the synchronous fleet answers an order the saga failed (anything else, still pending, is a 504).
SYNC_FAILURE_STATUS = {
    "payment_declined": status.HTTP_402_PAYMENT_REQUIRED,
    "insufficient_stock": status.HTTP_409_CONFLICT,
    "unknown_product": status.HTTP_409_CONFLICT,
}


@router.post(
    "/create_order",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAccepted | Order,  # a JSONResponse (the synchronous fleet's failures) passes as it is
    summary="Place an order; the saga (reserve stock, charge, compensate) runs in the background",
    description="Returns at once with the order `pending`; poll `GET /orders/{id}` for its status and timeline. "
    "The synchronous fleet answers once the saga has settled: 201 with the completed order and its timeline, "
    "402 if the payment failed (the reservation released), 409 if the stock could not be reserved.",
    responses={
        201: {"model": Order, "description": "Synchronous fleet: the order, completed."},
        402: {"model": FailedOrder, "description": "Synchronous fleet: the payment failed; the stock was released."},
        409: {"model": FailedOrder, "description": "Synchronous fleet: no stock reserved; nothing was charged."},
        **UNAVAILABLE_RESPONSE,
        **CALL_FAILED_RESPONSES,
    },
)
async def create_order(
    request: CreateOrderRequest, response: Response, runtime: RuntimeDep
) -> OrderAccepted | Order | JSONResponse:
    event_id = uuid.uuid4()
    correlation_id = current_correlation_id()
    async with runtime.outbox.transaction() as unit:
        order_id = await unit.connection.fetchval(
            CREATE_ORDER,
            product_id=request.product_id,
            quantity=request.quantity,
            payment_behaviour=request.payment_behaviour,
            correlation_id=correlation_id,
            created_event_id=str(event_id),
            timeout_s=order_settings(runtime).saga_timeout_s,
        )
        unit.publish(
            OrderCreated(
                event_id=event_id,
                correlation_id=correlation_id,
                order_id=order_id,
                product_id=request.product_id,
                quantity=request.quantity,
                payment_behaviour=request.payment_behaviour,
            )
        )
    if runtime.synchronous:
        order = await read_order(order_id, runtime)
        if order.status == "completed":
            response.status_code = status.HTTP_201_CREATED
            return order
        failed = FailedOrder(detail=f"order {order_id} {order.status}: {order.failure_reason}", order=order)
        status_code = SYNC_FAILURE_STATUS.get(order.failure_reason or "", status.HTTP_504_GATEWAY_TIMEOUT)
        return JSONResponse(status_code=status_code, content=failed.model_dump(mode="json"))
    return OrderAccepted(id=order_id, product_id=request.product_id, quantity=request.quantity)


@router.get(
    "/orders/{order_id}",
    summary="An order: its status, failure reason and saga timeline",
    responses={404: {"model": ErrorResponse, "description": "No such order."}, **UNAVAILABLE_RESPONSE},
)
async def read_order(order_id: Annotated[PlainInt, Path(ge=1, le=MAX_ID)], runtime: RuntimeDep) -> Order:
    async with runtime.database.connection() as connection:
        order = await connection.fetchrow(READ_ORDER, order_id=order_id)
        if order is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"order {order_id} not found")
        steps = await connection.fetch(READ_STEPS, order_id=order_id)
    created = SagaStep(
        step="order_created",
        event_type=OrderCreated.type_name(),
        service="orderservice",
        at=order["created_at"],
        detail=f"{order['quantity']} of product {order['product_id']} ordered",
        event_id=order["created_event_id"],
    )
    timeline = [created] + [
        SagaStep(
            step=step["step"],
            event_type=step["event_type"],
            service=step["service"],
            at=step["occurred_at"],
            detail=step["detail"],
            event_id=step["event_id"],
        )
        for step in steps
    ]
    return Order.model_validate({**dict(order), "timeline": timeline})


@router.get("/orders", summary="Orders, newest first, optionally by status or product", responses=UNAVAILABLE_RESPONSE)
async def list_orders(
    runtime: RuntimeDep,
    status_filter: OrderStatus | None = Query(default=None, alias="status", description="Only orders in this status."),
    product_id: PlainInt | None = Query(default=None, ge=1, le=MAX_ID, description="Only orders of this product."),
    limit: PlainInt = Query(default=100, ge=1, le=MAX_PAGE),
) -> list[OrderSummary]:
    filters: dict[str, object] = {}
    if status_filter is not None:
        filters["status"] = status_filter
    if product_id is not None:
        filters["product_id"] = product_id
    query = orders_query(by_status="status" in filters, by_product="product_id" in filters)
    rows = await runtime.database.fetch(query, limit=limit, **filters)
    return [OrderSummary.model_validate(dict(row)) for row in rows]
