import logging

from sqlalchemy import bindparam, select, update

from common import metrics
from common.consumer import MessageContext, Reject
from common.events import StockLevelChanged
from common.sql import Statement
from productservice.tables import products

log = logging.getLogger(__name__)

SHOW_STOCK = Statement(
    update(products)
    .where(products.c.id == bindparam("product_id"), products.c.stock_version < bindparam("stock_version"))
    .values(stock=bindparam("available"), stock_version=bindparam("stock_version"))
    .returning(products.c.id)
)
SHOWN_STOCK_VERSION = Statement(select(products.c.stock_version).where(products.c.id == bindparam("product_id")))


async def show_inventory_stock(event: StockLevelChanged, ctx: MessageContext[StockLevelChanged]) -> None:
    """Show inventory's available figure as the product's stock, unless a newer one is shown already.

    Deliberately publishes nothing: inventory reacts to `StockLevelSet`, so announcing its own
    figure back to it would loop, and the fanout carries catalogue changes, not stock movements.
    """
    async with ctx.transaction() as unit:
        shown = await unit.connection.fetchval(
            SHOW_STOCK, product_id=event.product_id, stock_version=event.stock_version, available=event.available
        )
        if shown is not None:
            return
        current = await unit.connection.fetchval(SHOWN_STOCK_VERSION, product_id=event.product_id)
        if current is None:
            raise Reject(f"product {event.product_id} is not in the catalogue")
    metrics.STALE_EVENTS_IGNORED.labels(queue=ctx.queue.name).inc()
    log.info(
        "ignored stock version %d of product %d: version %d is shown already",
        event.stock_version,
        event.product_id,
        current,
    )
