from fastapi import FastAPI

from common.service import create_service
from paymentservice.settings import Settings
from paymentservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="PaymentService",
        description="Scenario 2 (background payments) and the payment step of the Scenario 5 saga.",
        metadata=metadata,
    )


app = create_app()
