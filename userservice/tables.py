from sqlalchemy import Column, DateTime, Identity, Integer, Table, Text, func

from common.database import service_metadata

metadata = service_metadata("userservice")

users = Table(
    "users",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("email", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
