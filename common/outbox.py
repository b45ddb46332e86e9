"""The transactional outbox: an event commits with the change that caused it, then gets published.

`Outbox.transaction()` gives a `UnitOfWork`: business writes go through `unit.connection`, and
`unit.publish(event)` records the event in the service's `outbox` table *in the same transaction*.
So a 202 means the event is durably recorded and will be delivered at least once; consumers are
idempotent, which makes "at least once" safe.

Each row is publishable by one path at a time, so no two copies of an event are ever in flight:
- The transaction that writes a row gives it to its own process's dispatcher: `claimed_by` names the
  process and `claimed_until` is the database's clock at the insert plus OUTBOX_DISPATCH_CLAIM_S. After
  the commit the dispatcher publishes it (confirmed), then deletes it. It starts a publish only while
  the claim has more than PUBLISH_TIMEOUT_S left, and gives back (releases) the rows it could not
  publish, so the claim always outlives its publishing.
- The relay (every OUTBOX_RELAY_INTERVAL_S, in every replica) takes only rows whose claim has expired
  or was given back: a process that died after its commit, a broker outage, a full dispatcher queue.
  It claims them in the same statement (`FOR UPDATE SKIP LOCKED`, with a token of its own), publishes,
  deletes or gives them back.
- A row that can never be published (the broker returns it as unroutable, or its exchange is not in
  the topology) is parked: claimed forever, with `parked_reason`, counted in `outbox_parked_rows`,
  instead of being retried every second and holding up the rows behind it.

What waits in memory for the dispatcher is bounded (OUTBOX_DISPATCH_QUEUE_SIZE rows): once it is full,
new rows are written unclaimed and the relay publishes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy import BigInteger, DateTime, Float, Table, Text, any_, bindparam, cast, func, insert, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from common import metrics
from common.broker import Broker, BrokerUnavailable, UnroutableMessage, build_message
from common.database import Database, is_dependency_failure, outbox_table
from common.events import Event
from common.settings import ServiceSettings
from common.sql import Connection, Statement
from common.tasks import BackgroundTasks
from common.topology import route_for_publisher

log = logging.getLogger(__name__)

_DISPATCH_BATCH = 256
# The dispatcher starts no publish this close to the end of its claim, on top of the publish timeout.
_CLAIM_MARGIN_S = 1.0
_ROW_COLUMNS = ("id", "event_id", "event_type", "exchange", "routing_key", "correlation_id", "payload")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    event_type: str
    exchange: str
    routing_key: str
    correlation_id: str
    payload: str
    # Until when (time.monotonic()) the dispatcher may start publishing it; 0 for the relay's rows.
    publish_by: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_age_s: float
    parked: int


class _Statements:
    """The outbox's statements for one service's table, compiled once."""

    def __init__(self, table: Table) -> None:
        c = table.c
        claim_until = func.clock_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("claim_s", type_=Float))
        ids = bindparam("ids", type_=ARRAY(BigInteger))

        def unnest(name: str, item_type: object) -> object:
            return func.unnest(bindparam(name, type_=ARRAY(item_type)))  # type: ignore[arg-type]

        self.write = Statement(
            insert(table)
            .from_select(
                [
                    "event_id",
                    "event_type",
                    "exchange",
                    "routing_key",
                    "correlation_id",
                    "payload",
                    "claimed_until",
                    "claimed_by",
                ],
                select(
                    unnest("event_ids", UUID(as_uuid=False)),
                    unnest("event_types", Text),
                    unnest("exchanges", Text),
                    unnest("routing_keys", Text),
                    unnest("correlation_ids", Text),
                    unnest("payloads", Text),
                    claim_until,
                    bindparam("claimed_by", type_=UUID(as_uuid=False)),
                ),
            )
            .returning(c.id, c.event_id)
        )
        self.delete = Statement(table.delete().where(c.id == any_(ids)))
        self.release = Statement(
            table.update()
            .where(c.id == any_(ids), c.claimed_by == bindparam("claimed_by", type_=UUID(as_uuid=False)))
            .values(claimed_until=func.clock_timestamp())
        )
        self.park = Statement(
            table.update()
            .where(c.id == bindparam("id", type_=BigInteger))
            .values(
                claimed_until=cast(literal("infinity"), DateTime(timezone=True)),
                claimed_by=None,
                parked_reason=bindparam("reason", type_=Text),
            )
        )
        claimable = (
            select(c.id)
            .where(c.claimed_until < func.clock_timestamp())
            .order_by(c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self.claim = Statement(
            table.update()
            .where(c.id.in_(claimable.scalar_subquery()))
            .values(claimed_until=claim_until, claimed_by=bindparam("claimed_by", type_=UUID(as_uuid=False)))
            .returning(*(c[name] for name in _ROW_COLUMNS))
        )
        waiting = c.parked_reason.is_(None)
        self.backlog = Statement(
            select(
                func.count().filter(waiting),
                func.coalesce(func.extract("epoch", func.now() - func.min(c.created_at).filter(waiting)), 0),
                func.count().filter(c.parked_reason.is_not(None)),
            ).select_from(table)
        )


class UnitOfWork:
    """One database transaction, plus the events to publish if (and only if) it commits."""

    def __init__(self, connection: Connection, publisher: str) -> None:
        self.connection = connection
        self.publisher = publisher
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        """Publish `event` once this transaction commits (and never if it rolls back)."""
        route_for_publisher(event, self.publisher)  # fail inside the transaction, not later
        self.events.append(event)


class Outbox:
    def __init__(self, settings: ServiceSettings, database: Database, broker: Broker) -> None:
        self._settings = settings
        self._database = database
        self._broker = broker
        self._statements = _Statements(outbox_table(database.metadata))
        self._pending: asyncio.Queue[OutboxRow] = asyncio.Queue(maxsize=settings.outbox_dispatch_queue_size)
        # This process's claims; the relay's claims get a token per sweep.
        self._token = str(uuid.uuid4())
        self._dispatching = False
        self._tasks: BackgroundTasks | None = None

    @property
    def publisher(self) -> str:
        return self._settings.service_name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        async with self._database.transaction() as connection:
            unit = UnitOfWork(connection, self.publisher)
            yield unit
            rows = await self.write(connection, unit.events) if unit.events else []
        # Committed: hand the rows to the dispatcher without making the caller wait for the broker.
        for row in rows:
            if row.publish_by:
                try:
                    self._pending.put_nowait(row)
                except asyncio.QueueFull:
                    log.info("dispatcher queue full: outbox row %d goes to the relay once its claim ends", row.id)

    async def write(self, connection: Connection, events: Sequence[Event]) -> list[OutboxRow]:
        """Insert `events` into the outbox inside the caller's transaction; return the rows written."""
        routes = [route_for_publisher(event, self.publisher) for event in events]
        claim = self._dispatching and self._pending.qsize() + len(events) <= self._pending.maxsize
        claim_s = self._settings.outbox_dispatch_claim_s if claim else 0.0
        # The database starts the claim at the insert, after this instant: a deadline from here is a safe one.
        publish_by = time.monotonic() + claim_s - self._settings.publish_timeout_s - _CLAIM_MARGIN_S if claim else 0.0
        payloads = [event.model_dump_json() for event in events]
        written = await connection.fetch(
            self._statements.write,
            event_ids=[str(event.event_id) for event in events],
            event_types=[event.event_type for event in events],
            exchanges=[route.exchange.name for route in routes],
            routing_keys=[route.routing_key for route in routes],
            correlation_ids=[event.correlation_id for event in events],
            payloads=payloads,
            claim_s=claim_s,
            claimed_by=self._token if claim else None,
        )
        ids = {str(row["event_id"]): row["id"] for row in written}
        return [
            OutboxRow(
                id=ids[str(event.event_id)],
                event_id=str(event.event_id),
                event_type=event.event_type,
                exchange=route.exchange.name,
                routing_key=route.routing_key,
                correlation_id=event.correlation_id,
                payload=payload,
                publish_by=publish_by,
            )
            for event, route, payload in zip(events, routes, payloads, strict=True)
        ]

    def start(self, tasks: BackgroundTasks) -> None:
        self._tasks = tasks
        self._dispatching = True
        tasks.start("outbox-dispatcher", self._dispatch_forever)
        tasks.start("outbox-relay", self._relay_forever)

    async def close(self) -> None:
        """Publish what is already committed and claimed here (within the shutdown grace), then stop."""
        self._dispatching = False
        if self._broker.is_connected and self._tasks is not None:
            try:
                await asyncio.wait_for(self._pending.join(), timeout=self._settings.shutdown_grace_s)
            except TimeoutError:
                log.warning("%d outbox rows left for the relay", self._pending.qsize())
        if self._tasks is not None:
            await self._tasks.stop("outbox-dispatcher")
            await self._tasks.stop("outbox-relay")

    async def relay_once(self) -> int:
        """Claim rows nobody is publishing (their claim expired or was given back), publish and delete
        them; return how many went out."""
        if not self._broker.is_connected:
            return 0  # nothing could be confirmed; the rows stay unclaimed for when the broker is back
        token = str(uuid.uuid4())
        async with self._database.connection() as connection:
            claimed = await connection.fetch(
                self._statements.claim,
                limit=self._settings.outbox_relay_batch_size,
                claim_s=self._settings.outbox_dispatch_claim_s,
                claimed_by=token,
            )
        if not claimed:
            return 0
        rows = [
            OutboxRow(**{name: str(row[name]) if name == "event_id" else row[name] for name in _ROW_COLUMNS})
            for row in claimed
        ]
        confirmed = await self._publish_and_settle(rows, token)
        metrics.OUTBOX_RELAYED.inc(confirmed)
        log.info("outbox relay published %d of %d rows left behind", confirmed, len(rows))
        return confirmed

    async def backlog(self) -> Backlog:
        """Rows waiting for the broker (and the age of the oldest), and rows parked for good."""
        row = await self._database.fetchrow(self._statements.backlog)
        assert row is not None
        return Backlog(pending=int(row[0]), oldest_age_s=float(row[1]), parked=int(row[2]))

    async def _publish_and_settle(self, rows: Sequence[OutboxRow], token: str) -> int:
        """Publish `rows`, then delete the confirmed ones, park those that can never go out and give
        back the rest; return how many were confirmed."""
        outcomes = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
        confirmed: list[int] = []
        retry: list[int] = []
        parked: list[tuple[OutboxRow, str, str]] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                confirmed.append(row.id)
            elif isinstance(outcome, UnroutableMessage):
                parked.append((row, "unroutable", str(outcome)))
            elif isinstance(outcome, LookupError):
                parked.append((row, "unknown_exchange", str(outcome)))
            elif isinstance(outcome, BrokerUnavailable):
                retry.append(row.id)
            elif isinstance(outcome, Exception):
                log.error("outbox row %d (%s) failed to publish: %r", row.id, row.event_type, outcome)
                retry.append(row.id)
            else:
                raise outcome
        async with self._database.connection() as connection:
            if confirmed:
                await connection.execute(self._statements.delete, ids=confirmed)
            if retry:
                await connection.execute(self._statements.release, ids=retry, claimed_by=token)
            for row, kind, reason in parked:
                log.error("parking outbox row %d (%s, event %s): %s", row.id, row.event_type, row.event_id, reason)
                await connection.execute(self._statements.park, id=row.id, reason=f"{kind}: {reason}"[:1000])
                metrics.OUTBOX_ROWS_PARKED.labels(kind=kind).inc()
        return len(confirmed)

    async def _publish(self, row: OutboxRow) -> None:
        message = build_message(
            body=row.payload.encode(),
            event_id=row.event_id,
            event_type=row.event_type,
            correlation_id=row.correlation_id,
            app_id=self._settings.service_name,
        )
        await self._broker.publish_message(message, exchange=row.exchange, routing_key=row.routing_key)

    async def _dispatch_forever(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < _DISPATCH_BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                now = time.monotonic()
                # A row whose claim is about to end is the relay's: publishing it now could overlap the relay.
                in_time = [row for row in batch if row.publish_by > now]
                late = [row.id for row in batch if row.publish_by <= now]
                if late:  # handed back now, rather than left for the relay once the claim has run out
                    await self._database.execute(self._statements.release, ids=late, claimed_by=self._token)
                if in_time:
                    await self._publish_and_settle(in_time, self._token)
            except Exception as exc:
                # The rows are committed: once their claim ends, the relay publishes them. Nothing is lost.
                level = logging.WARNING if is_dependency_failure(exc) else logging.ERROR
                log.log(level, "outbox dispatch of %d rows deferred to the relay: %r", len(batch), exc)
            finally:
                for _ in batch:
                    self._pending.task_done()

    async def _relay_forever(self) -> None:
        settings = self._settings
        backlog_due = 0.0
        while True:
            await asyncio.sleep(settings.outbox_relay_interval_s)
            try:
                while await self.relay_once() >= settings.outbox_relay_batch_size:
                    pass  # a full batch: more may be waiting
                if time.monotonic() >= backlog_due:
                    backlog = await self.backlog()
                    metrics.OUTBOX_BACKLOG.set(backlog.pending)
                    metrics.OUTBOX_OLDEST_AGE.set(backlog.oldest_age_s)
                    metrics.OUTBOX_PARKED.set(backlog.parked)
                    backlog_due = time.monotonic() + settings.outbox_backlog_interval_s
            except (asyncpg.PostgresError, OSError, Exception) as exc:
                level = logging.WARNING if is_dependency_failure(exc) else logging.ERROR
                log.log(level, "outbox relay pass failed, retrying: %r", exc)
