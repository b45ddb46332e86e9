from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, func, select

from cacheservice.tables import cached_products, stock_levels
from common.inputs import DatabaseId
from common.service import UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement

router = APIRouter(tags=["cache"])

# The entry shows inventory's stock figure where it has one.
READ_CACHED = Statement(
    select(
        *(column for column in cached_products.c if column.name != "stock"),
        func.coalesce(stock_levels.c.available, cached_products.c.stock).label("stock"),
        stock_levels.c.stock_version,
    )
    .select_from(cached_products.outerjoin(stock_levels, stock_levels.c.product_id == cached_products.c.product_id))
    .where(cached_products.c.product_id == bindparam("product_id"))
)


class CachedProduct(BaseModel):
    product_id: int = Field(examples=[1])
    name: str = Field(examples=["Updated Laptop"])
    description: str | None = Field(examples=["14-inch ultrabook, 16 GB RAM, 512 GB SSD"])
    price: Decimal | None = Field(examples=["999.99"])
    stock: int = Field(
        description="Inventory's available figure (`StockLevelChanged`); until inventory's first figure arrives, "
        "the one of the catalogue change that refreshed this entry.",
        examples=[75],
    )
    stock_version: int | None = Field(
        description="Inventory's version of `stock`; null while only the catalogue's figure is known.", examples=[3]
    )
    product_version: int = Field(description="The catalogue version this entry holds.", examples=[2])
    updated_at: datetime = Field(description="When the catalogue made this version.")
    cached_at: datetime = Field(description="When this service stored it.")


@router.get(
    "/cache/products/{product_id}",
    summary="The cached copy of a product, as refreshed by the latest product update, with inventory's stock",
    responses={
        404: {"model": ErrorResponse, "description": "The product is not in the cache."},
        **UNAVAILABLE_RESPONSE,
    },
)
async def read_cached_product(product_id: DatabaseId, runtime: RuntimeDep) -> CachedProduct:
    row = await runtime.database.fetchrow(READ_CACHED, product_id=product_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"product {product_id} is not in the cache")
    return CachedProduct.model_validate(dict(row))
