import asyncio
import logging

from sqlalchemy import bindparam

from common.consumer import MessageContext
from common.events import UserRegistered
from common.sql import Statement
from emailservice.metrics import EMAILS_SENT
from emailservice.tables import sent_emails

log = logging.getLogger(__name__)

WELCOME_SUBJECT = "Welcome aboard!"

RECORD_EMAIL = Statement(
    sent_emails.insert().values(
        user_id=bindparam("user_id"),
        recipient=bindparam("recipient"),
        subject=bindparam("subject"),
        body=bindparam("body"),
        event_id=bindparam("event_id"),
    )
)


async def send_welcome_email(event: UserRegistered, ctx: MessageContext[UserRegistered]) -> None:
    # Stands in for the SMTP round trip; done before the transaction so no connection is held meanwhile.
    await asyncio.sleep(ctx.settings.email_send_delay_s)
    async with ctx.transaction() as unit:
        await unit.connection.execute(
            RECORD_EMAIL,
            user_id=event.user_id,
            recipient=event.email,
            subject=WELCOME_SUBJECT,
            body=f"Hello {event.email}, thanks for registering.",
            event_id=str(event.event_id),
        )
    EMAILS_SENT.inc()
    log.debug("welcome email sent to user %d", event.user_id)
