from fastapi import FastAPI

from common.service import create_service
from userservice.api import router
from userservice.settings import Settings
from userservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="UserService",
        description="Scenario 1 (fire-and-forget): `POST /register` stores the user and commits a "
        "`UserRegistered` event with it; the email service sends the welcome email in the background.",
        metadata=metadata,
        routers=[router],
    )


app = create_app()
