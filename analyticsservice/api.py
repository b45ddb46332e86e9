from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, func, select

from analyticsservice.ingest import ClickGroupsDep
from analyticsservice.tables import click_counts, product_update_counts
from common.events import Click
from common.inputs import DatabaseId, PlainInt, trimmed_text
from common.service import UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement

router = APIRouter(tags=["analytics"])

MAX_USER_ID = 2**63 - 1

Page = trimmed_text(512)
SessionId = trimmed_text(128)


class ClickRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(strict=True, ge=1, le=MAX_USER_ID, examples=[123])
    page: Page = Field(examples=["homepage"])
    session_id: SessionId | None = Field(default=None, examples=["s-9f2c"])


TOTALS = Statement(select(func.coalesce(func.sum(click_counts.c.clicks), 0), func.count()))
TOP_PAGES = Statement(
    select(click_counts.c.page, click_counts.c.clicks)
    .order_by(click_counts.c.clicks.desc(), click_counts.c.page)
    .limit(bindparam("limit"))
)
PRODUCT_UPDATES_TOTAL = Statement(select(func.coalesce(func.sum(product_update_counts.c.updates), 0)))
PAGE_CLICKS = Statement(select(click_counts.c.clicks).where(click_counts.c.page == bindparam("page")))
PRODUCT_UPDATE_COUNT = Statement(
    select(product_update_counts).where(product_update_counts.c.product_id == bindparam("product_id"))
)


class ClickAccepted(BaseModel):
    status: Literal["tracked"] = Field(
        description="The click is durable (confirmed by the broker, or committed to the outbox while the "
        "broker is away) and will be counted once.",
        examples=["tracked"],
    )


class Summary(BaseModel):
    clicks_total: int = Field(examples=[2000])
    clicks_by_page: dict[str, int] = Field(
        description="Clicks per page, the most clicked first (at most `top_pages` pages).",
        examples=[{"homepage": 1500, "products": 500}],
    )
    pages_total: int = Field(description="Distinct pages clicked.", examples=[2])
    product_updates_total: int = Field(description="Product updates counted (creations included).", examples=[12])


class PageClicks(BaseModel):
    page: str = Field(examples=["homepage"])
    clicks: int = Field(examples=[1500])


class ProductUpdateCount(BaseModel):
    product_id: int = Field(examples=[1])
    updates: int = Field(description="Product updates counted for this product.", examples=[3])
    last_product_version: int = Field(examples=[3])


@router.post(
    "/track_click",
    summary="Record a click; it is counted in the background",
    description="Answers once the click is durable: confirmed by the broker (a persistent message on "
    "`click_tracked_queue`, which carries the clicks accepted together), or, if the broker cannot confirm "
    "it, committed to the service's outbox, from which it is published when the broker is back. Either way "
    "it is counted exactly once, at the consumer's own pace. 503 only when neither the broker nor the "
    "database can take it.",
    responses=UNAVAILABLE_RESPONSE,
)
async def track_click(click: ClickRequest, groups: ClickGroupsDep) -> ClickAccepted:
    await groups.submit(Click(user_id=click.user_id, page=click.page, session_id=click.session_id))
    return ClickAccepted(status="tracked")


@router.get("/analytics/summary", summary="Click and product-update counts", responses=UNAVAILABLE_RESPONSE)
async def summary(
    runtime: RuntimeDep,
    top_pages: PlainInt = Query(default=100, ge=1, le=1000, description="How many pages `clicks_by_page` lists."),
) -> Summary:
    async with runtime.database.connection() as connection:
        totals = await connection.fetchrow(TOTALS)  # an aggregate: always one row
        assert totals is not None
        clicks_total, pages_total = totals
        top = await connection.fetch(TOP_PAGES, limit=top_pages)
        product_updates_total = await connection.fetchval(PRODUCT_UPDATES_TOTAL)
    return Summary(
        clicks_total=int(clicks_total),
        clicks_by_page={page: int(clicks) for page, clicks in top},
        pages_total=int(pages_total),
        product_updates_total=int(product_updates_total or 0),
    )


@router.get("/analytics/clicks", summary="Clicks counted for one page", responses=UNAVAILABLE_RESPONSE)
async def page_clicks(
    runtime: RuntimeDep,
    # In Annotated: a `= Query()` default would drop the Page type's own constraints and validator.
    page: Annotated[Page, Query(examples=["homepage"])],
) -> PageClicks:
    clicks = await runtime.database.fetchval(PAGE_CLICKS, page=page)
    return PageClicks(page=page, clicks=int(clicks or 0))


@router.get(
    "/analytics/product_updates/{product_id}",
    summary="Product updates counted for one product",
    responses={
        404: {"model": ErrorResponse, "description": "No update of this product was counted."},
        **UNAVAILABLE_RESPONSE,
    },
)
async def product_updates(product_id: DatabaseId, runtime: RuntimeDep) -> ProductUpdateCount:
    row = await runtime.database.fetchrow(PRODUCT_UPDATE_COUNT, product_id=product_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no update of product {product_id} was counted")
    return ProductUpdateCount.model_validate(dict(row))
