"""PostgreSQL access: one async engine per service, one schema per service.

Each service owns the tables in its own schema (named after the service) and never reads
another's. Tables are created at startup under an advisory lock, so several replicas of a
service can start at once. The pool is opened and warmed before the service reports ready,
so the first requests do not pay for connection setup.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import sqlalchemy.exc
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    delete,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateSchema

from common.settings import ServiceSettings

log = logging.getLogger(__name__)


def service_metadata(schema: str) -> MetaData:
    """A service's table registry, with the messaging core's own tables already in it."""
    metadata = MetaData(schema=schema)
    Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", UUID(as_uuid=False), nullable=False),
        Column("event_type", Text, nullable=False),
        Column("exchange", Text, nullable=False),
        Column("routing_key", Text, nullable=False),
        Column("correlation_id", Text, nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    Table(
        "processed_events",
        metadata,
        Column("consumer", Text, nullable=False),
        Column("event_id", UUID(as_uuid=False), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("consumer", "event_id"),
        Index(None, "processed_at"),
    )
    return metadata


def outbox_table(metadata: MetaData) -> Table:
    return metadata.tables[f"{metadata.schema}.outbox"]


def processed_events_table(metadata: MetaData) -> Table:
    return metadata.tables[f"{metadata.schema}.processed_events"]


async def upsert_if_newer(
    connection: AsyncConnection,
    table: Table,
    row: Mapping[str, Any],
    *,
    key: str,
    version: str,
    touched_at: str | None = None,
) -> bool:
    """Store `row` unless a version at least as new is stored already: updates that arrive out of
    order or twice never replace a newer state. `touched_at` (if given) records when it was written.
    Returns whether `row` was written."""
    statement = pg_insert(table).values(**row)
    changes = {column: statement.excluded[column] for column in row}
    if touched_at is not None:
        changes[touched_at] = func.now()
    written = await connection.scalar(
        statement.on_conflict_do_update(
            index_elements=[table.c[key]],
            set_=changes,
            where=table.c[version] < statement.excluded[version],
        ).returning(table.c[key])
    )
    return written is not None


def is_dependency_failure(exc: BaseException) -> bool:
    """True when `exc` means the database is unreachable, not that the statement was wrong."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.InterfaceError):
        return True  # pool exhausted or connection closed under us
    original = getattr(exc, "orig", None) or exc.__cause__
    candidates = (exc, original, getattr(original, "__cause__", None))
    return any(
        isinstance(
            candidate,
            ConnectionError
            | OSError
            | asyncpg.exceptions.CannotConnectNowError
            | asyncpg.exceptions.ConnectionDoesNotExistError
            | asyncpg.exceptions.AdminShutdownError
            | asyncpg.exceptions.TooManyConnectionsError,
        )
        for candidate in candidates
        if candidate is not None
    )


# asyncpg's client-side "invalid input for query argument" (a value its codec cannot encode, such as an
# int beyond the column's range or a string that is not UTF-8); asyncpg.exceptions.DataError is the
# server-side SQLSTATE class 22, and both share the name.
_ArgumentNotEncodable = asyncpg.exceptions._base.DataError


def is_invalid_input(exc: BaseException) -> bool:
    """True when the database refused a value of the statement (out of range, not storable text):
    the request carried it, so it is the client's error, not the server's or a dependency's."""
    if isinstance(exc, sqlalchemy.exc.DataError):
        return True
    original = getattr(exc, "orig", None) or exc.__cause__
    candidates = (exc, original, getattr(original, "__cause__", None))
    return any(
        isinstance(candidate, asyncpg.exceptions.DataError | _ArgumentNotEncodable)
        for candidate in candidates
        if candidate is not None
    )


class Database:
    def __init__(self, settings: ServiceSettings, metadata: MetaData) -> None:
        if metadata.schema is None:
            raise ValueError("service tables must live in the service's own schema")
        self.metadata = metadata
        self.schema = metadata.schema
        self._pool_size = settings.db_pool_size
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            # A restarted server invalidates the whole pool on the first disconnect error, so no
            # per-checkout ping (an extra round trip on every request) is needed.
            pool_pre_ping=False,
            pool_recycle=1800,
            connect_args={
                "timeout": settings.db_pool_timeout_s,
                "server_settings": {
                    "application_name": settings.service_name,
                    "statement_timeout": str(int(settings.db_statement_timeout_s * 1000)),
                },
            },
        )

    async def create_tables(self) -> None:
        async with self.engine.begin() as connection:
            # Replicas starting together would race on CREATE; serialise them per schema.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(self.schema.encode())}
            )
            await connection.execute(CreateSchema(self.schema, if_not_exists=True))
            await connection.run_sync(self.metadata.create_all)

    async def warm_up(self) -> None:
        """Open `pool_size` connections now rather than on the first requests."""

        async def hold_one(ready: asyncio.Barrier) -> None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
                await ready.wait()

        barrier = asyncio.Barrier(self._pool_size)
        await asyncio.gather(*(hold_one(barrier) for _ in range(self._pool_size)))

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    async def prune_processed_events(self, older_than_s: float, batch_size: int = 10_000) -> int:
        """Delete idempotency records older than `older_than_s`, in batches (short locks); return how many."""
        table = processed_events_table(self.metadata)
        pruned = 0
        while True:
            async with self.engine.begin() as connection:
                doomed = (
                    select(table.c.consumer, table.c.event_id)
                    .where(table.c.processed_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
                deleted = (
                    await connection.execute(
                        delete(table).where(tuple_(table.c.consumer, table.c.event_id).in_(doomed))
                    )
                ).rowcount
            pruned += deleted
            if deleted < batch_size:
                return pruned

    async def dispose(self) -> None:
        await self.engine.dispose()
