from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, case, func, or_, select

from common.inputs import PlainInt, trimmed_text
from common.service import UNAVAILABLE_RESPONSE, RuntimeDep
from common.sql import Statement
from searchservice.tables import search_documents, stock_levels

router = APIRouter(tags=["search"])

MAX_RESULTS = 100

# Surrounding whitespace is not searched for, and a query of whitespace only is refused (422) like any invalid one.
SearchText = trimmed_text(100)


class SearchHit(BaseModel):
    product_id: int = Field(examples=[1])
    name: str = Field(examples=["Updated Laptop"])
    description: str | None = Field(examples=["14-inch ultrabook, 16 GB RAM, 512 GB SSD"])
    price: Decimal | None = Field(examples=["999.99"])
    stock: int = Field(
        description="Inventory's available figure (`StockLevelChanged`); until inventory's first figure "
        "arrives, the one of the last catalogue change.",
        examples=[75],
    )
    stock_version: int | None = Field(
        description="Inventory's version of `stock`; null while only the catalogue's figure is known.", examples=[3]
    )
    product_version: int = Field(examples=[2])
    updated_at: datetime
    indexed_at: datetime


class SearchResults(BaseModel):
    query: str = Field(examples=["laptop"])
    count: int = Field(description="Number of hits returned.", examples=[1])
    results: list[SearchHit]


_exact, _prefix, _anywhere = bindparam("exact"), bindparam("prefix"), bindparam("anywhere")
_name_matches = search_documents.c.name.ilike(_anywhere, escape="\\")
# A hit shows inventory's stock figure where it has one.
_HIT_COLUMNS = (
    *(column for column in search_documents.c if column.name != "stock"),
    func.coalesce(stock_levels.c.available, search_documents.c.stock).label("stock"),
    stock_levels.c.stock_version,
)
SEARCH = Statement(
    select(*_HIT_COLUMNS)
    .select_from(search_documents.outerjoin(stock_levels, stock_levels.c.product_id == search_documents.c.product_id))
    .where(or_(_name_matches, search_documents.c.description.ilike(_anywhere, escape="\\")))
    .order_by(
        # Name matches rank first: the whole name, then its start, then anywhere in it.
        case(
            (search_documents.c.name.ilike(_exact, escape="\\"), 0),
            (search_documents.c.name.ilike(_prefix, escape="\\"), 1),
            (_name_matches, 2),
            else_=3,
        ),
        search_documents.c.name,
        search_documents.c.product_id,
    )
    .limit(bindparam("limit"))
)


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
    rows = await runtime.database.fetch(
        SEARCH, exact=literal, prefix=f"{literal}%", anywhere=f"%{literal}%", limit=limit
    )
    hits = [SearchHit.model_validate(dict(row)) for row in rows]
    return SearchResults(query=q, count=len(hits), results=hits)
