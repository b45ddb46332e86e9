from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from common.database import service_metadata

metadata = service_metadata("orderservice")

ORDER_STATUSES = ("pending", "completed", "failed")

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("product_id", Integer, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("failure_reason", Text, nullable=True),
    Column("payment_behaviour", Text, nullable=True),
    # The request's correlation id: the timeout's OrderCancelled carries it, like every other saga event.
    Column("correlation_id", Text, nullable=False),
    Column("created_event_id", UUID(as_uuid=False), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deadline", DateTime(timezone=True), nullable=False),
    CheckConstraint(f"status IN {ORDER_STATUSES!r}", name="orders_status_known"),
    CheckConstraint("quantity > 0", name="orders_quantity_positive"),
    Index("ix_orders_status_id", "status", "id"),
    Index("ix_orders_product_id_id", "product_id", "id"),
    # The timeout watch reads only pending orders, oldest deadline first.
    Index("ix_orders_pending_deadline", "deadline", postgresql_where=text("status = 'pending'")),
)

# The saga timeline: each step this service heard of, once per kind of step and order (a
# duplicate or a repeated event with a new id adds nothing). `order_created` is the order row itself.
order_steps = Table(
    "order_steps",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("order_id", Integer, ForeignKey(orders.c.id), nullable=False),
    Column("step", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("service", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("order_id", "step"),
)
