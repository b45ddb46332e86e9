from fastapi import FastAPI

from analyticsservice.settings import Settings
from analyticsservice.tables import metadata
from common.service import create_service


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="AnalyticsService",
        description="Scenarios 3 and 6: counts product updates and ingests clicks through a buffering queue.",
        metadata=metadata,
    )


app = create_app()
