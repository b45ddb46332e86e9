from fastapi import FastAPI

from common.service import create_service
from searchservice.settings import Settings
from searchservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="SearchService",
        description="Scenario 3 (fan-out consumer): the product search index.",
        metadata=metadata,
    )


app = create_app()
