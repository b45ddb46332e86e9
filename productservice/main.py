from fastapi import FastAPI

from common import topology
from common.service import create_service
from productservice.api import router
from productservice.catalogue import seeded_catalogue
from productservice.handlers import show_inventory_stock
from productservice.settings import Settings
from productservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="ProductService",
        description="Scenario 3 (fan-out): the product catalogue. `PUT /products/{id}` commits the change with a "
        "`ProductUpdated` event, which the `product_updates` fanout exchange copies to search, cache and "
        "analytics. Stock belongs to the inventory service: a stock figure given here is sent to it "
        "(`StockLevelSet`), and the catalogue shows inventory's figure (`StockLevelChanged`). "
        "Products 1-3 are seeded at startup.",
        metadata=metadata,
        routers=[router],
        subscriptions={topology.PRODUCT_STOCK_LEVELS: show_inventory_stock},
        lifespans=[seeded_catalogue],
    )


app = create_app()
