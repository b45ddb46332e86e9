import logging

from cacheservice.tables import cached_products, stock_levels
from common import metrics
from common.consumer import MessageContext
from common.database import versioned_upsert
from common.events import ProductUpdated, StockLevelChanged

log = logging.getLogger(__name__)

_COLUMNS = ("product_id", "name", "description", "price", "stock", "product_version", "updated_at")
UPSERT_STOCK_LEVEL = versioned_upsert(
    stock_levels,
    ("product_id", "available", "stock_version"),
    key="product_id",
    version="stock_version",
    touched_at="applied_at",
)
UPSERT = versioned_upsert(
    cached_products, _COLUMNS, key="product_id", version="product_version", touched_at="cached_at"
)


async def refresh_cached_product(event: ProductUpdated, ctx: MessageContext[ProductUpdated]) -> None:
    """Refresh, not just invalidate: the event carries the product's whole new state, so the cache can
    serve it at once without calling back into the catalogue. An older or repeated version is ignored."""
    entry = {
        "product_id": event.product_id,
        "name": event.name,
        "description": event.description,
        "price": event.price,
        "stock": event.stock,
        "product_version": event.product_version,
        "updated_at": event.updated_at,
    }
    async with ctx.transaction() as unit:
        refreshed = await unit.connection.fetchval(UPSERT, **entry)
    if refreshed is None:
        metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
        log.info("ignored version %d of product %d: a newer one is cached", event.product_version, event.product_id)


async def follow_stock_level(event: StockLevelChanged, ctx: MessageContext[StockLevelChanged]) -> None:
    """Keep inventory's available figure, shown as the stock of the cached product: inventory owns the
    stock, and a catalogue change carries only the figure the catalogue had then. A figure as old as the one
    kept, or older, is ignored: they can arrive late, twice or out of order (retries, redeliveries). Kept
    even for a product not seen yet, which shows it once its first update arrives."""
    async with ctx.transaction() as unit:
        kept = await unit.connection.fetchval(
            UPSERT_STOCK_LEVEL,
            product_id=event.product_id,
            available=event.available,
            stock_version=event.stock_version,
        )
    if kept is None:
        metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
        log.info("ignored stock version %d of product %d: a newer one is kept", event.stock_version, event.product_id)
