from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from analyticsservice.metrics import CLICKS_COUNTED
from analyticsservice.tables import click_counts, product_update_counts
from common.consumer import BatchContext, MessageContext
from common.events import ClickTracked, ProductUpdated


async def count_clicks(events: Sequence[ClickTracked], ctx: BatchContext[ClickTracked]) -> None:
    """Add a batch of clicks to the per-page counts. The batch consumer has left out clicks counted
    before, and records these as counted in the same transaction: each click counts exactly once."""
    clicks_per_page = Counter(event.page for event in events)
    last_click: dict[str, datetime] = {}
    for event in events:
        last_click[event.page] = max(event.occurred_at, last_click.get(event.page, event.occurred_at))
    # Pages in a fixed order, so two replicas' batches lock shared rows in the same order (no deadlock).
    rows = [
        {"page": page, "clicks": clicks_per_page[page], "last_click_at": last_click[page]}
        for page in sorted(clicks_per_page)
    ]
    statement = insert(click_counts).values(rows)
    async with ctx.transaction() as unit:
        await unit.connection.execute(
            statement.on_conflict_do_update(
                index_elements=[click_counts.c.page],
                set_={
                    "clicks": click_counts.c.clicks + statement.excluded.clicks,
                    "last_click_at": func.greatest(click_counts.c.last_click_at, statement.excluded.last_click_at),
                },
            )
        )
    CLICKS_COUNTED.inc(len(events))


async def count_product_update(event: ProductUpdated, ctx: MessageContext[ProductUpdated]) -> None:
    """Count every product update once (the consumer drops redelivered copies by event id)."""
    statement = insert(product_update_counts).values(
        product_id=event.product_id, updates=1, last_product_version=event.product_version
    )
    async with ctx.transaction() as unit:
        await unit.connection.execute(
            statement.on_conflict_do_update(
                index_elements=[product_update_counts.c.product_id],
                set_={
                    "updates": product_update_counts.c.updates + 1,
                    "last_product_version": func.greatest(
                        product_update_counts.c.last_product_version, statement.excluded.last_product_version
                    ),
                    "last_counted_at": func.now(),
                },
            )
        )
