import logging

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from common import metrics
from common.consumer import MessageContext
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
    statement = insert(search_documents).values(**document)
    async with ctx.transaction() as unit:
        indexed = await unit.connection.scalar(
            statement.on_conflict_do_update(
                index_elements=[search_documents.c.product_id],
                set_={**{key: statement.excluded[key] for key in document}, "indexed_at": func.now()},
                where=search_documents.c.product_version < statement.excluded.product_version,
            ).returning(search_documents.c.product_id)
        )
    if indexed is None:
        metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
        log.info("ignored version %d of product %d: a newer one is indexed", event.product_version, event.product_id)
