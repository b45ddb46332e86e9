from __future__ import annotations

import functools
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from asyncpg import Record
from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import bindparam, func, insert, select, update

from common.events import Money
from common.inputs import MAX_DATABASE_INT, DatabaseId, PlainInt, trimmed_text
from common.service import UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement
from productservice.catalogue import publish_change
from productservice.tables import products

router = APIRouter(tags=["products"])

MAX_PAGE = 500
MAX_STOCK = 1_000_000_000

ProductName = trimmed_text(200)
Description = trimmed_text(2000, required=False)
StockFigure = Annotated[int, Field(strict=True, ge=0, le=MAX_STOCK, description="Units available for sale.")]

NOT_FOUND_RESPONSE: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorResponse, "description": "No such product."}
}


LIST_PRODUCTS = Statement(
    select(products).order_by(products.c.id).limit(bindparam("limit")).offset(bindparam("offset"))
)
READ_PRODUCT = Statement(select(products).where(products.c.id == bindparam("product_id")))
CREATE_PRODUCT = Statement(
    insert(products)
    .values(
        name=bindparam("name"),
        stock=bindparam("stock"),
        price=bindparam("price"),
        description=bindparam("description"),
        product_version=1,
    )
    .returning(*products.c)
)


@functools.cache
def change_statement(fields: frozenset[str]) -> Statement:
    """One statement per set of fields changed (at most 15), compiled on first use. One statement: the row
    lock orders concurrent changes, so versions and events agree."""
    return Statement(
        update(products)
        .where(products.c.id == bindparam("product_id"))
        .values(
            {
                **{field: bindparam(field) for field in sorted(fields)},
                "product_version": products.c.product_version + 1,
                "updated_at": func.now(),
            }
        )
        .returning(*products.c)
    )


class Product(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["Laptop"])
    description: str | None = Field(examples=["14-inch ultrabook, 16 GB RAM, 512 GB SSD"])
    price: Decimal | None = Field(description="Decimal, serialised as a string.", examples=["999.99"])
    stock: int = Field(
        description="Inventory's available figure (set through the catalogue, then kept in step with "
        "reservations and releases reported by the inventory service).",
        examples=[100],
    )
    product_version: int = Field(
        description="Increases with every catalogue change; carried by `ProductUpdated`.", examples=[1]
    )
    created_at: datetime
    updated_at: datetime


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ProductName = Field(examples=["Mechanical keyboard"])
    stock: StockFigure = 0
    price: Money | None = Field(default=None, examples=["89.90"])
    description: Description | None = Field(default=None, examples=["Tenkeyless, brown switches"])


class ProductChange(BaseModel):
    """Any of the fields; `description: null` removes the description."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Updated Laptop", "stock": 75}]})

    name: ProductName | None = None
    stock: StockFigure | None = None
    price: Money | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ProductChange:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, stock, price, description")
        for field in ("name", "stock", "price"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class ProductChangeResponse(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["Updated Laptop"])
    stock: int = Field(examples=[75])
    event_published: bool = Field(
        description="True once `ProductUpdated` is committed to the outbox with the change: search, cache "
        "and analytics will all receive it, even if the broker or any of them is down right now.",
        examples=[True],
    )


def _product(row: Record) -> Product:
    return Product.model_validate(dict(row))


@router.get("/products", summary="List products by id", responses=UNAVAILABLE_RESPONSE)
async def list_products(
    runtime: RuntimeDep,
    limit: PlainInt = Query(default=100, ge=1, le=MAX_PAGE),
    # Ids are PostgreSQL integers: no offset beyond their range can find a product.
    offset: PlainInt = Query(default=0, ge=0, le=MAX_DATABASE_INT),
) -> list[Product]:
    rows = await runtime.database.fetch(LIST_PRODUCTS, limit=limit, offset=offset)
    return [_product(row) for row in rows]


@router.get(
    "/products/{product_id}",
    summary="Read a product",
    responses={**NOT_FOUND_RESPONSE, **UNAVAILABLE_RESPONSE},
)
async def read_product(product_id: DatabaseId, runtime: RuntimeDep) -> Product:
    row = await runtime.database.fetchrow(READ_PRODUCT, product_id=product_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"product {product_id} not found")
    return _product(row)


@router.post(
    "/products",
    status_code=status.HTTP_201_CREATED,
    summary="Add a product; search, cache, analytics and inventory learn about it through events",
    responses=UNAVAILABLE_RESPONSE,
)
async def create_product(request: ProductCreate, response: Response, runtime: RuntimeDep) -> Product:
    async with runtime.outbox.transaction() as unit:
        row = await unit.connection.fetchrow(CREATE_PRODUCT, **request.model_dump())
        assert row is not None  # an INSERT ... RETURNING returns its row
        publish_change(unit, row, stock_was_set=True)
    response.headers["Location"] = f"/products/{row['id']}"
    return _product(row)


@router.put(
    "/products/{product_id}",
    summary="Change a product; the change fans out to search, cache and analytics",
    description="Publishes `ProductUpdated` to the `product_updates` fanout exchange (one copy per bound "
    "queue) in the same transaction as the change; a `stock` figure also goes to the inventory service.",
    responses={**NOT_FOUND_RESPONSE, **UNAVAILABLE_RESPONSE},
)
async def change_product(product_id: DatabaseId, change: ProductChange, runtime: RuntimeDep) -> ProductChangeResponse:
    values = change.model_dump(exclude_unset=True)
    async with runtime.outbox.transaction() as unit:
        row = await unit.connection.fetchrow(change_statement(frozenset(values)), product_id=product_id, **values)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"product {product_id} not found")
        publish_change(unit, row, stock_was_set="stock" in values)
    return ProductChangeResponse(id=row["id"], name=row["name"], stock=row["stock"], event_published=True)
