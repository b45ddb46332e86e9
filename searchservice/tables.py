from sqlalchemy import BigInteger, CheckConstraint, Column, DateTime, Integer, Numeric, Table, Text, func

from common.database import service_metadata

metadata = service_metadata("searchservice")

search_documents = Table(
    "search_documents",
    metadata,
    Column("product_id", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("price", Numeric(12, 2), nullable=True),
    Column("stock", Integer, nullable=False),
    # The catalogue version indexed: an update carrying an older or equal version is ignored.
    Column("product_version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("indexed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Inventory's figure for each product (`StockLevelChanged`), shown as the stock of search hits in place of the
# catalogue's. A table of its own, with its own version: the two streams arrive independently (a figure may
# come before the product's first update), and a table new to an existing database is created at startup.
stock_levels = Table(
    "stock_levels",
    metadata,
    Column("product_id", Integer, primary_key=True, autoincrement=False),
    Column("available", Integer, nullable=False),
    # Inventory's per-product version of the figure: an older or equal one is ignored.
    Column("stock_version", BigInteger, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("available >= 0", name="available_not_negative"),
)
