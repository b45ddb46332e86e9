from sqlalchemy import CheckConstraint, Column, DateTime, Integer, Table, Text, func

from common.database import service_metadata

metadata = service_metadata("inventoryservice")

RESERVATION_STATUSES = ("reserved", "sold", "released", "returned", "rejected", "cancelled")

# One row per product. The checks make the stock identity a database invariant: whatever a handler
# does, available + reserved + sold is the total ever stocked (initial + restocks + adjustments),
# and no figure is ever negative.
stock = Table(
    "stock",
    metadata,
    Column("product_id", Integer, primary_key=True, autoincrement=False),
    Column("available", Integer, nullable=False),
    Column("reserved", Integer, nullable=False, server_default="0"),
    Column("sold", Integer, nullable=False, server_default="0"),
    Column("total", Integer, nullable=False),
    # The newest catalogue version applied (StockLevelSet): older sets are ignored.
    Column("product_version", Integer, nullable=False),
    # Bumped by every change, carried by StockLevelChanged so readers can drop stale figures.
    Column("stock_version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("available >= 0", name="stock_available_not_negative"),
    CheckConstraint("reserved >= 0", name="stock_reserved_not_negative"),
    CheckConstraint("sold >= 0", name="stock_sold_not_negative"),
    CheckConstraint("available + reserved + sold = total", name="stock_adds_up"),
)

# One row per order inventory heard of: what it did for it. The primary key makes every saga
# event about an order act at most once, and a `cancelled` row (the order timed out before its
# OrderCreated arrived) keeps a late OrderCreated from reserving anything.
reservations = Table(
    "reservations",
    metadata,
    Column("order_id", Integer, primary_key=True, autoincrement=False),
    Column("product_id", Integer, nullable=False, index=True),
    Column("quantity", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("quantity > 0", name="reservations_quantity_positive"),
    CheckConstraint(f"status IN {RESERVATION_STATUSES!r}", name="reservations_status_known"),
)
