from fastapi import FastAPI

from common.service import create_service
from orderservice.settings import Settings
from orderservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="OrderService",
        description="Scenario 5 (saga choreography): orders and their saga timeline.",
        metadata=metadata,
    )


app = create_app()
