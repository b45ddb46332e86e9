from fastapi import FastAPI

from cacheservice.api import router
from cacheservice.handlers import follow_stock_level, refresh_cached_product
from cacheservice.settings import Settings
from cacheservice.tables import metadata
from common import topology
from common.service import create_service


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="CacheService",
        description="Scenario 3 (fan-out consumer): the product cache. Every `ProductUpdated` from "
        "`cache_product_updates_queue` refreshes the cached copy with the product's new state (the event "
        "carries all of it); an older or repeated version never replaces a newer one. "
        "`GET /cache/products/{id}` shows the entry, with inventory's stock figure, followed from "
        "`cache_stock_levels_queue` (the `stock_levels` fanout).",
        metadata=metadata,
        routers=[router],
        subscriptions={
            topology.CACHE_PRODUCT_UPDATES: refresh_cached_product,
            topology.CACHE_STOCK_LEVELS: follow_stock_level,
        },
    )


app = create_app()
