from fastapi import FastAPI

from common.service import create_service
from inventoryservice.settings import Settings
from inventoryservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="InventoryService",
        description="Scenario 5 (saga participant): stock reservations and their compensation.",
        metadata=metadata,
    )


app = create_app()
