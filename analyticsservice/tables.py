from sqlalchemy import BigInteger, Column, DateTime, Integer, Table, Text, func

from common.database import service_metadata

metadata = service_metadata("analyticsservice")

# Counts live in PostgreSQL, not in process memory: replicas share the queues, so each sees only some
# of the events, and a restart must not forget what was counted.
click_counts = Table(
    "click_counts",
    metadata,
    Column("page", Text, primary_key=True),
    Column("clicks", BigInteger, nullable=False),
    Column("last_click_at", DateTime(timezone=True), nullable=False),
)

product_update_counts = Table(
    "product_update_counts",
    metadata,
    Column("product_id", Integer, primary_key=True, autoincrement=False),
    Column("updates", BigInteger, nullable=False),
    Column("last_product_version", Integer, nullable=False),
    Column("last_counted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
