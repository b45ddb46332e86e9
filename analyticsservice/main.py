from fastapi import FastAPI

from analyticsservice.api import router
from analyticsservice.handlers import count_clicks, count_product_update
from analyticsservice.ingest import click_groups
from analyticsservice.settings import Settings
from analyticsservice.tables import metadata
from common import topology
from common.consumer import Batched
from common.service import create_service


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service(
        settings,
        title="AnalyticsService",
        description="Scenario 6 (buffered ingestion): `POST /track_click` answers once the broker has confirmed "
        "the click (or, while the broker cannot, the outbox has it); `click_tracked_queue` absorbs bursts and a "
        "batching consumer counts every click exactly once. Scenario 3 (fan-out consumer): counts every "
        "product update from `analytics_product_updates_queue`. `GET /analytics/summary` shows both.",
        metadata=metadata,
        routers=[router],
        lifespans=[click_groups],
        subscriptions={
            topology.CLICK_TRACKED: Batched(
                count_clicks, max_size=settings.click_batch_size, max_wait_s=settings.click_batch_max_wait_s
            ),
            topology.ANALYTICS_PRODUCT_UPDATES: count_product_update,
        },
        # Room for a full batch being committed while the next one fills.
        prefetch_overrides={topology.CLICK_TRACKED: 2 * settings.click_batch_size},
    )


app = create_app()
