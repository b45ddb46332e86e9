import logging

from common import metrics
from common.consumer import MessageContext
from common.database import upsert_if_newer
from common.events import ProductUpdated
from searchservice.tables import search_documents

log = logging.getLogger(__name__)


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
        indexed = await upsert_if_newer(
            unit.connection,
            search_documents,
            document,
            key="product_id",
            version="product_version",
            touched_at="indexed_at",
        )
    if not indexed:
        metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
        log.info("ignored version %d of product %d: a newer one is indexed", event.product_version, event.product_id)
