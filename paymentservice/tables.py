from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import UUID

from common.database import service_metadata

metadata = service_metadata("paymentservice")

PAYMENT_STATUSES = ("processing", "completed", "failed", "cancelled", "refunded")

payments = Table(
    "payments",
    metadata,
    Column("payment_id", Text, primary_key=True),
    # Set for the saga's charges: at most one payment per order, whatever is redelivered or raced.
    Column("order_id", Integer, nullable=True),
    Column("product_id", Integer, nullable=True),
    Column("quantity", Integer, nullable=True),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("currency", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("payment_behaviour", Text, nullable=True),
    Column("transaction_id", Text, nullable=True),
    Column("failure_reason", Text, nullable=True),
    Column("refund_id", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("settled_at", DateTime(timezone=True), nullable=True),
    Column("refunded_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("order_id"),
    CheckConstraint(f"status IN {PAYMENT_STATUSES!r}", name="payments_status_known"),
    CheckConstraint("amount > 0", name="payments_amount_positive"),
)

# The audit trail: every settled payment as announced on the `payment_completed` fanout.
payment_audit = Table(
    "payment_audit",
    metadata,
    Column("payment_id", Text, primary_key=True),
    Column("transaction_id", Text, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("currency", Text, nullable=False),
    Column("order_id", Integer, nullable=True),
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
