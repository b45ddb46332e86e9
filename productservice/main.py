from fastapi import FastAPI

from common.service import create_service
from productservice.settings import Settings
from productservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="ProductService",
        description="Scenario 3 (fan-out): product changes published to the `product_updates` fanout exchange.",
        metadata=metadata,
    )


app = create_app()
