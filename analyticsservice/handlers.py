from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import DateTime, Integer, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY, insert

from analyticsservice.metrics import CLICKS_COUNTED
from analyticsservice.tables import click_counts, product_update_counts
from common.consumer import BatchContext, MessageContext
from common.events import ClicksTracked, ProductUpdated
from common.sql import Statement

_per_page = select(
    func.unnest(bindparam("pages", type_=ARRAY(Text))),
    func.unnest(bindparam("clicks", type_=ARRAY(Integer))),
    func.unnest(bindparam("last_click_at", type_=ARRAY(DateTime(timezone=True)))),
)
_add_clicks = insert(click_counts).from_select(["page", "clicks", "last_click_at"], _per_page)
ADD_CLICKS = Statement(
    _add_clicks.on_conflict_do_update(
        index_elements=[click_counts.c.page],
        set_={
            "clicks": click_counts.c.clicks + _add_clicks.excluded.clicks,
            "last_click_at": func.greatest(click_counts.c.last_click_at, _add_clicks.excluded.last_click_at),
        },
    )
)

_count_update = insert(product_update_counts).values(
    product_id=bindparam("product_id"), updates=1, last_product_version=bindparam("product_version")
)
COUNT_PRODUCT_UPDATE = Statement(
    _count_update.on_conflict_do_update(
        index_elements=[product_update_counts.c.product_id],
        set_={
            "updates": product_update_counts.c.updates + 1,
            "last_product_version": func.greatest(
                product_update_counts.c.last_product_version, _count_update.excluded.last_product_version
            ),
            "last_counted_at": func.now(),
        },
    )
)


async def count_clicks(events: Sequence[ClicksTracked], ctx: BatchContext[ClicksTracked]) -> None:
    """Add a batch of messages' clicks to the per-page counts. The batch consumer has left out messages
    counted before, and records these as counted in the same transaction: each click counts exactly once."""
    clicks = [click for event in events for click in event.clicks]
    clicks_per_page = Counter(click.page for click in clicks)
    last_click: dict[str, datetime] = {}
    for click in clicks:
        last_click[click.page] = max(click.clicked_at, last_click.get(click.page, click.clicked_at))
    # Pages in a fixed order, so two replicas' batches lock shared rows in the same order (no deadlock).
    pages = sorted(clicks_per_page)
    async with ctx.transaction() as unit:
        await unit.connection.execute(
            ADD_CLICKS,
            pages=pages,
            clicks=[clicks_per_page[page] for page in pages],
            last_click_at=[last_click[page] for page in pages],
        )
    CLICKS_COUNTED.inc(len(clicks))


async def count_product_update(event: ProductUpdated, ctx: MessageContext[ProductUpdated]) -> None:
    """Count every product update once (the consumer drops redelivered copies by event id)."""
    async with ctx.transaction() as unit:
        await unit.connection.execute(
            COUNT_PRODUCT_UPDATE, product_id=event.product_id, product_version=event.product_version
        )
