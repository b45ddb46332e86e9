from sqlalchemy import BigInteger, CheckConstraint, Column, DateTime, Identity, Integer, Numeric, Table, Text, func

from common.database import service_metadata

metadata = service_metadata("productservice")

products = Table(
    "products",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("price", Numeric(12, 2), nullable=True),
    # The figure the catalogue shows: set through the catalogue, then kept at inventory's `available`.
    Column("stock", Integer, nullable=False),
    # Bumped by every catalogue change and carried by its events, so consumers can drop stale copies.
    Column("product_version", Integer, nullable=False),
    # The newest `StockLevelChanged.stock_version` shown; older stock figures are ignored.
    Column("stock_version", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("stock >= 0", name="stock_not_negative"),
    CheckConstraint("price > 0", name="price_positive"),
    CheckConstraint("product_version >= 1", name="product_version_positive"),
)
