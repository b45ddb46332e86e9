from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, select

from common.inputs import PlainInt
from common.service import UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement
from inventoryservice.tables import reservations, stock

router = APIRouter(tags=["inventory"])

MAX_PAGE = 500
DatabaseId = Annotated[PlainInt, Path(ge=1, le=2**31 - 1)]


class StockLevel(BaseModel):
    product_id: int = Field(examples=[1])
    available: int = Field(ge=0, description="Can be reserved now.", examples=[97])
    reserved: int = Field(ge=0, description="Held for orders whose payment is under way.", examples=[1])
    sold: int = Field(ge=0, description="Paid for.", examples=[2])
    total: int = Field(
        ge=0,
        description="Initial stock plus restocks and adjustments (set through the catalogue): always "
        "available + reserved + sold.",
        examples=[100],
    )
    stock_version: int = Field(description="Increases with every change of these figures.", examples=[7])
    updated_at: datetime


class Reservation(BaseModel):
    order_id: int = Field(examples=[456])
    product_id: int = Field(examples=[1])
    quantity: int = Field(examples=[1])
    status: Literal["reserved", "sold", "released", "returned", "rejected", "cancelled"] = Field(
        description="`reserved` while the payment is under way; then `sold` (paid) or `released` (payment failed "
        "or order cancelled). `returned`: sold, then given back because the order was cancelled (its charge is "
        "refunded). `rejected`: refused (see `reason`). `cancelled`: the order was cancelled before inventory "
        "saw it, so nothing was ever reserved."
    )
    reason: str | None = Field(default=None, examples=["payment_declined"])
    created_at: datetime
    updated_at: datetime


_STOCK_COLUMNS = (
    stock.c.product_id,
    stock.c.available,
    stock.c.reserved,
    stock.c.sold,
    stock.c.total,
    stock.c.stock_version,
    stock.c.updated_at,
)
READ_STOCK = Statement(select(*_STOCK_COLUMNS).where(stock.c.product_id == bindparam("product_id")))
LIST_STOCK = Statement(select(*_STOCK_COLUMNS).order_by(stock.c.product_id).limit(bindparam("limit")))
READ_RESERVATION = Statement(select(reservations).where(reservations.c.order_id == bindparam("order_id")))


@router.get(
    "/inventory/{product_id}",
    summary="A product's stock: available, reserved and sold",
    responses={404: {"model": ErrorResponse, "description": "Inventory has no stock for it."}, **UNAVAILABLE_RESPONSE},
)
async def read_stock(product_id: DatabaseId, runtime: RuntimeDep) -> StockLevel:
    row = await runtime.database.fetchrow(READ_STOCK, product_id=product_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"inventory has no stock for product {product_id}")
    return StockLevel.model_validate(dict(row))


@router.get("/inventory", summary="Every product's stock, by product id", responses=UNAVAILABLE_RESPONSE)
async def list_stock(runtime: RuntimeDep, limit: PlainInt = Query(default=100, ge=1, le=MAX_PAGE)) -> list[StockLevel]:
    rows = await runtime.database.fetch(LIST_STOCK, limit=limit)
    return [StockLevel.model_validate(dict(row)) for row in rows]


@router.get(
    "/reservations/{order_id}",
    summary="What inventory did for an order",
    responses={404: {"model": ErrorResponse, "description": "Inventory never heard of it."}, **UNAVAILABLE_RESPONSE},
)
async def read_reservation(order_id: DatabaseId, runtime: RuntimeDep) -> Reservation:
    row = await runtime.database.fetchrow(READ_RESERVATION, order_id=order_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"inventory has no reservation for order {order_id}")
    return Reservation.model_validate(dict(row))
