import logging

from common import metrics
from common.consumer import MessageContext
from common.database import versioned_upsert
from common.events import ProductUpdated
from searchservice.tables import search_documents

log = logging.getLogger(__name__)

_COLUMNS = ("product_id", "name", "description", "price", "stock", "product_version", "updated_at")
UPSERT = versioned_upsert(
    search_documents, _COLUMNS, key="product_id", version="product_version", touched_at="indexed_at"
)


async def reindex_product(event: ProductUpdated, ctx: MessageContext[ProductUpdated]) -> None:
    """Index the product's new state, unless a newer version is indexed already (updates can
    arrive out of order: retries, redeliveries, several publishers' replicas)."""
    document = {
        "product_id": event.product_id,
        "name": event.name,
        "description": event.description,
        "price": event.price,
        "stock": event.stock,
        "product_version": event.product_version,
        "updated_at": event.updated_at,
    }
    async with ctx.transaction() as unit:
        indexed = await unit.connection.fetchval(UPSERT, **document)
    if indexed is None:
        metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
        log.info("ignored version %d of product %d: a newer one is indexed", event.product_version, event.product_id)
