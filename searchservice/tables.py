from sqlalchemy import Column, DateTime, Integer, Numeric, Table, Text, func

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
