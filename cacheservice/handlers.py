import logging

from cacheservice.tables import cached_products
from common import metrics
from common.consumer import MessageContext
from common.database import versioned_upsert
from common.events import ProductUpdated

log = logging.getLogger(__name__)

_COLUMNS = ("product_id", "name", "description", "price", "stock", "product_version", "updated_at")
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
