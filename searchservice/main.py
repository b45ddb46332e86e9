from fastapi import FastAPI

from common import topology
from common.service import create_service
from searchservice.api import router
from searchservice.handlers import follow_stock_level, reindex_product
from searchservice.settings import Settings
from searchservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="SearchService",
        description="Scenario 3 (fan-out consumer): reindexes every product change it receives from "
        "`search_product_updates_queue` (bound to the `product_updates` fanout). `GET /search?q=` finds "
        "products by name or description. Stale or repeated updates never replace a newer version. Hits show "
        "inventory's stock figure, followed from `search_stock_levels_queue` (the `stock_levels` fanout).",
        metadata=metadata,
        routers=[router],
        subscriptions={
            topology.SEARCH_PRODUCT_UPDATES: reindex_product,
            topology.SEARCH_STOCK_LEVELS: follow_stock_level,
        },
    )


app = create_app()
