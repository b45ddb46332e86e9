from fastapi import FastAPI

from common import topology
from common.consumer import CheckProcessedFirst
from common.service import create_service
from emailservice.api import router
from emailservice.handlers import send_welcome_email
from emailservice.settings import Settings
from emailservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="EmailService",
        description="Scenario 1 (fire-and-forget): consumes `UserRegistered` from `user_registered_queue` and "
        "sends each new user one welcome email (`EMAIL_SEND_DELAY_S` simulates the mail server).",
        metadata=metadata,
        routers=[router],
        # The email goes out before the transaction: a known duplicate must not reach the handler.
        subscriptions={topology.USER_REGISTERED: CheckProcessedFirst(send_welcome_email)},
    )


app = create_app()
