from fastapi import FastAPI

from common.service import create_service
from reportservice.settings import Settings
from reportservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="ReportService",
        description="Scenario 4 (CPU job offloading): report jobs worked outside the HTTP process.",
        metadata=metadata,
    )


app = create_app()
