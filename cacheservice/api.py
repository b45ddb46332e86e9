from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, select

from cacheservice.tables import cached_products
from common.inputs import DatabaseId
from common.service import UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement

router = APIRouter(tags=["cache"])

READ_CACHED = Statement(select(cached_products).where(cached_products.c.product_id == bindparam("product_id")))


class CachedProduct(BaseModel):
    product_id: int = Field(examples=[1])
    name: str = Field(examples=["Updated Laptop"])
    description: str | None = Field(examples=["14-inch ultrabook, 16 GB RAM, 512 GB SSD"])
    price: Decimal | None = Field(examples=["999.99"])
    stock: int = Field(description="The stock figure of the catalogue change that refreshed this entry.", examples=[75])
    product_version: int = Field(description="The catalogue version this entry holds.", examples=[2])
    updated_at: datetime = Field(description="When the catalogue made this version.")
    cached_at: datetime = Field(description="When this service stored it.")


@router.get(
    "/cache/products/{product_id}",
    summary="The cached copy of a product, as refreshed by the latest product update",
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
