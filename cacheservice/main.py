from fastapi import FastAPI

from cacheservice.settings import Settings
from cacheservice.tables import metadata
from common.service import create_service


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="CacheService",
        description="Scenario 3 (fan-out consumer): the product cache.",
        metadata=metadata,
    )


app = create_app()
