"""PostgreSQL access: one asyncpg pool per service, one schema per service.

Each service owns the tables in its own schema (named after the service) and never reads another's.
Tables are created at startup under an advisory lock, so several replicas of a service can start at
once. The pool opens all its connections before the service reports ready, so the first requests do
not pay for connection setup. Statements are `common.sql.Statement` objects: SQLAlchemy Core expressions
compiled once, executed on asyncpg.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    bindparam,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateSchema

from common.settings import ServiceSettings
from common.sql import Connection, Statement, affected_rows, compiled_statements

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """No connection to the database could be had (it is down, restarting, or the pool is exhausted)."""


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
        # Who may publish the row until when (see common.outbox): its writer's dispatcher, then the relay.
        Column("claimed_until", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()),
        Column("claimed_by", UUID(as_uuid=False), nullable=True),
        # Rows that can never be published (unroutable, unknown exchange) are parked here with the reason.
        Column("parked_reason", Text, nullable=True),
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


def _core_upgrades(schema: str) -> tuple[str, ...]:
    """Columns the core's tables gained since their first release: `create_all` adds no column to a table
    that exists, so a database created by an earlier version is brought up to date here (idempotent)."""
    outbox = f'"{schema}".outbox'
    return (
        f"ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS claimed_until timestamptz NOT NULL DEFAULT clock_timestamp()",
        f"ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS claimed_by uuid",
        f"ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS parked_reason text",
    )


def outbox_table(metadata: MetaData) -> Table:
    return metadata.tables[f"{metadata.schema}.outbox"]


def processed_events_table(metadata: MetaData) -> Table:
    return metadata.tables[f"{metadata.schema}.processed_events"]


def versioned_upsert(
    table: Table, columns: Iterable[str], *, key: str, version: str, touched_at: str | None = None
) -> Statement:
    """Store a row (the named columns, given as values) unless a version at least as new is stored already:
    updates that arrive out of order or twice never replace a newer state. `touched_at` (if given) records
    when it was written. The query returns the key when the row was written, nothing otherwise."""
    names = list(columns)
    statement = pg_insert(table).values({name: bindparam(name, type_=table.c[name].type) for name in names})
    changes: dict[str, Any] = {name: statement.excluded[name] for name in names if name != key}
    if touched_at is not None:
        changes[touched_at] = func.now()
    return Statement(
        statement.on_conflict_do_update(
            index_elements=[table.c[key]], set_=changes, where=table.c[version] < statement.excluded[version]
        ).returning(table.c[key])
    )


# Class 08 (connection exceptions, including the client's "connection was closed in the middle of
# operation"), class 57 (operator intervention: shutdown, restart, and the statement timeout - the
# database is slow, not the statement wrong) and class 53 (out of connections, memory or disk).
_DATABASE_DOWN = (
    DatabaseUnavailable,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def is_dependency_failure(exc: BaseException) -> bool:
    """True when `exc` means the database is unreachable or too slow, not that the statement was wrong.

    Deliberately narrow: a message that fails this way is retried without using up an attempt, so an
    error that is the message's own (a bug, a bad value, an unrelated OSError) must not count."""
    return isinstance(exc, _DATABASE_DOWN) or isinstance(exc.__cause__, _DATABASE_DOWN)


# asyncpg's client-side "invalid input for query argument" (a value its codec cannot encode, such as an
# int beyond the column's range or a string that is not UTF-8); asyncpg.exceptions.DataError is the
# server-side SQLSTATE class 22, and both share the name.
_ArgumentNotEncodable = asyncpg.exceptions._base.DataError


def is_invalid_input(exc: BaseException) -> bool:
    """True when the database refused a value of the statement (out of range, not storable text):
    the request carried it, so it is the client's error, not the server's or a dependency's."""
    return any(
        isinstance(candidate, asyncpg.exceptions.DataError | _ArgumentNotEncodable)
        for candidate in (exc, exc.__cause__)
        if candidate is not None
    )


def asyncpg_dsn(database_url: str) -> str:
    """The libpq form of the settings' URL (they name SQLAlchemy's driver, asyncpg takes plain URLs)."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _set_codecs(connection: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await connection.set_type_codec(json_type, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # Every UUID column is declared `as_uuid=False`: ids travel as text (message ids, JSON), so read them so.
    await connection.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")


async def _prepare_statements(connection: asyncpg.Connection, schema: str) -> None:
    """Prepare this service's statements on a new connection before it serves. The first use of a
    statement on a connection costs a Parse and, for arrays and custom codecs, asyncpg's type
    introspection: measured at 3-8 ms each here, and at startup, with every pool connection cold at once,
    the first requests waited some 50 ms. Statements of other schemas (imported by tests) are skipped."""
    marker = f"{schema}."
    for statement in compiled_statements():
        if marker in statement.sql:
            await connection.prepare(statement.sql)


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """The services keep no session state (settings, advisory session locks, LISTEN, cursors), so the
    reset query asyncpg sends on every release by default would be a round trip for nothing. An open
    transaction is still rolled back by the pool before this is called."""


class Database:
    def __init__(self, settings: ServiceSettings, metadata: MetaData) -> None:
        if metadata.schema is None:
            raise ValueError("service tables must live in the service's own schema")
        self.metadata = metadata
        self.schema = metadata.schema
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        processed = processed_events_table(metadata)
        doomed = (
            select(processed.c.consumer, processed.c.event_id)
            .where(
                processed.c.processed_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, bindparam("age_s", type_=Float))
            )
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self._prune = Statement(
            processed.delete().where(tuple_(processed.c.consumer, processed.c.event_id).in_(doomed))
        )

    async def create_tables(self) -> None:
        """Create the schema and its tables if missing, and bring the core's tables up to date."""
        engine = create_async_engine(self._settings.database_url, poolclass=NullPool)
        try:
            async with engine.begin() as connection:
                # Replicas starting together would race on CREATE; serialise them per schema.
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(self.schema.encode())}
                )
                await connection.execute(CreateSchema(self.schema, if_not_exists=True))
                await connection.run_sync(self.metadata.create_all)
                for upgrade in _core_upgrades(self.schema):
                    await connection.execute(text(upgrade))
        finally:
            await engine.dispose()

    async def open(self) -> None:
        """Open the pool with all `db_pool_size` connections at once, rather than on the first requests."""
        settings = self._settings
        self._pool = await asyncpg.create_pool(
            asyncpg_dsn(settings.database_url),
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size + settings.db_max_overflow,
            max_inactive_connection_lifetime=0,
            timeout=settings.db_pool_timeout_s,
            init=self._prepare_connection,
            reset=_nothing_to_reset,
            server_settings={
                "application_name": settings.service_name,
                "statement_timeout": str(int(settings.db_statement_timeout_s * 1000)),
            },
        )

    async def _prepare_connection(self, connection: asyncpg.Connection) -> None:
        await _set_codecs(connection)
        await _prepare_statements(connection, self.schema)

    async def warm_up(self) -> None:
        """Prepare every statement compiled since the pool opened (the core's, built after it) on every
        pooled connection, all held at once so that each one is reached."""
        connections = [await self.pool.acquire() for _ in range(self._settings.db_pool_size)]
        try:
            await asyncio.gather(*(_prepare_statements(connection, self.schema) for connection in connections))
        finally:
            for connection in connections:
                await self.pool.release(connection)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; each statement on it commits by itself."""
        pool = self.pool
        try:
            raw = await pool.acquire(timeout=self._settings.db_pool_timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"no database connection: {type(exc).__name__}: {exc}") from exc
        try:
            yield Connection(raw)
        finally:
            await pool.release(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction: committed if the block returns, rolled back if it raises."""
        async with self.connection() as connection, connection.raw.transaction():
            yield connection

    async def fetch(self, statement: Statement, /, **values: Any) -> list[asyncpg.Record]:
        async with self.connection() as connection:
            return await connection.fetch(statement, **values)

    async def fetchrow(self, statement: Statement, /, **values: Any) -> asyncpg.Record | None:
        async with self.connection() as connection:
            return await connection.fetchrow(statement, **values)

    async def fetchval(self, statement: Statement, /, **values: Any) -> Any:
        async with self.connection() as connection:
            return await connection.fetchval(statement, **values)

    async def execute(self, statement: Statement, /, **values: Any) -> str:
        async with self.connection() as connection:
            return await connection.execute(statement, **values)

    async def ping(self) -> None:
        async with self.connection() as connection:
            await connection.raw.fetchval("SELECT 1")

    async def prune_processed_events(self, older_than_s: float, batch_size: int = 10_000) -> int:
        """Delete idempotency records older than `older_than_s`, in batches (short locks); return how many."""
        pruned = 0
        while True:
            deleted = affected_rows(await self.execute(self._prune, age_s=older_than_s, limit=batch_size))
            pruned += deleted
            if deleted < batch_size:
                return pruned

    async def dispose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
