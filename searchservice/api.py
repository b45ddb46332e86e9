from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import case, or_, select

from common.inputs import PlainInt, trimmed_text
from common.service import UNAVAILABLE_RESPONSE, RuntimeDep
from searchservice.tables import search_documents

router = APIRouter(tags=["search"])

MAX_RESULTS = 100

# Surrounding whitespace is not searched for, and a query of whitespace only is refused (422) like any invalid one.
SearchText = trimmed_text(100)


class SearchHit(BaseModel):
    product_id: int = Field(examples=[1])
    name: str = Field(examples=["Updated Laptop"])
    description: str | None = Field(examples=["14-inch ultrabook, 16 GB RAM, 512 GB SSD"])
    price: Decimal | None = Field(examples=["999.99"])
    stock: int = Field(examples=[75])
    product_version: int = Field(examples=[2])
    updated_at: datetime
    indexed_at: datetime


class SearchResults(BaseModel):
    query: str = Field(examples=["laptop"])
    count: int = Field(description="Number of hits returned.", examples=[1])
    results: list[SearchHit]


def escape_like(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally (`%`, `_` and `\\` included)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@router.get(
    "/search",
    summary="Find products whose name or description contains the query (case-insensitive)",
    description="The index is fed by `ProductUpdated` events, so a product is found by its new name "
    "shortly after `PUT /products/{id}`, and no longer by its old one. Name matches rank first.",
    responses=UNAVAILABLE_RESPONSE,
)
async def search(
    runtime: RuntimeDep,
    # In Annotated: a `= Query()` default would drop the type's own constraints and validator.
    q: Annotated[SearchText, Query(description="Text to look for.", examples=["laptop"])],
    limit: PlainInt = Query(default=20, ge=1, le=MAX_RESULTS),
) -> SearchResults:
    literal = escape_like(q)
    pattern = f"%{literal}%"
    name_matches = search_documents.c.name.ilike(pattern, escape="\\")
    rank = case(
        (search_documents.c.name.ilike(literal, escape="\\"), 0),
        (search_documents.c.name.ilike(f"{literal}%", escape="\\"), 1),
        (name_matches, 2),
        else_=3,
    )
    query = (
        select(search_documents)
        .where(or_(name_matches, search_documents.c.description.ilike(pattern, escape="\\")))
        .order_by(rank, search_documents.c.name, search_documents.c.product_id)
        .limit(limit)
    )
    async with runtime.database.engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    hits = [SearchHit.model_validate(row._mapping) for row in rows]
    return SearchResults(query=q, count=len(hits), results=hits)
