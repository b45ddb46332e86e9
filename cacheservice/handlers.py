import logging

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from cacheservice.tables import cached_products
from common import metrics
from common.consumer import MessageContext
from common.events import ProductUpdated

log = logging.getLogger(__name__)


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
    statement = insert(cached_products).values(**entry)
    async with ctx.transaction() as unit:
        refreshed = await unit.connection.scalar(
            statement.on_conflict_do_update(
                index_elements=[cached_products.c.product_id],
                set_={**{key: statement.excluded[key] for key in entry}, "cached_at": func.now()},
                where=cached_products.c.product_version < statement.excluded.product_version,
            ).returning(cached_products.c.product_id)
        )
    if refreshed is None:
        metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
        log.info("ignored version %d of product %d: a newer one is cached", event.product_version, event.product_id)
