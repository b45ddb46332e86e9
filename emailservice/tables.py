from sqlalchemy import Column, DateTime, Identity, Integer, Table, Text, func
from sqlalchemy.dialects.postgresql import UUID

from common.database import service_metadata

metadata = service_metadata("emailservice")

sent_emails = Table(
    "sent_emails",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("user_id", Integer, nullable=False, index=True),
    Column("recipient", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    # The event that caused the email: at most one email per event, whatever the broker redelivers.
    Column("event_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("sent_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
