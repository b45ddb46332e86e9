"""The transactional outbox: an event commits with the change that caused it, then gets published.

`Outbox.transaction()` gives a `UnitOfWork`: business writes go through `unit.connection`, and
`unit.publish(event)` records the event in the service's `outbox` table *in the same
transaction*. After the commit the rows go to an in-process dispatcher that publishes them
with publisher confirms and deletes them once confirmed. Whatever is left behind - the process
died between commit and publish, or the broker was down - is picked up by the relay, which
sweeps rows older than a grace period (`FOR UPDATE SKIP LOCKED`, so replicas share the work).

So a 202 means the event is durably recorded and will be delivered at least once; consumers
are idempotent, which makes "at least once" safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from common import metrics
from common.broker import Broker, BrokerUnavailable, build_message
from common.database import Database, is_dependency_failure, outbox_table
from common.events import Event
from common.settings import ServiceSettings
from common.topology import route_for_publisher

log = logging.getLogger(__name__)

_DISPATCH_BATCH = 256


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    event_type: str
    exchange: str
    routing_key: str
    correlation_id: str
    payload: str


class UnitOfWork:
    """One database transaction, plus the events to publish if (and only if) it commits."""

    def __init__(self, connection: AsyncConnection, outbox: Table, publisher: str) -> None:
        self.connection = connection
        self._outbox = outbox
        self._publisher = publisher
        self._events: list[Event] = []

    def publish(self, event: Event) -> None:
        """Publish `event` once this transaction commits (and never if it rolls back)."""
        route_for_publisher(type(event), self._publisher)  # fail inside the transaction, not later
        self._events.append(event)

    async def write_outbox(self) -> list[OutboxRow]:
        if not self._events:
            return []
        rows = []
        for event in self._events:
            route = route_for_publisher(type(event), self._publisher)
            rows.append(
                {
                    "event_id": str(event.event_id),
                    "event_type": event.event_type,
                    "exchange": route.exchange.name,
                    "routing_key": route.routing_key,
                    "correlation_id": event.correlation_id,
                    "payload": event.model_dump_json(),
                }
            )
        ids = (await self.connection.execute(insert(self._outbox).returning(self._outbox.c.id), rows)).scalars()
        return [OutboxRow(id=row_id, **row) for row_id, row in zip(ids, rows, strict=True)]


class Outbox:
    def __init__(self, settings: ServiceSettings, database: Database, broker: Broker) -> None:
        self._settings = settings
        self._database = database
        self._broker = broker
        self._table = outbox_table(database.metadata)
        self._pending: asyncio.Queue[OutboxRow] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        async with self._database.transaction() as connection:
            unit = UnitOfWork(connection, self._table, self._settings.service_name)
            yield unit
            rows = await unit.write_outbox()
        # Committed: hand the rows to the dispatcher without making the caller wait for the broker.
        for row in rows:
            self._pending.put_nowait(row)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dispatch_forever(), name="outbox-dispatcher"),
            asyncio.create_task(self._relay_forever(), name="outbox-relay"),
        ]

    async def close(self) -> None:
        """Publish what is already committed (within the grace period), then stop."""
        if self._broker.is_connected:
            try:
                await asyncio.wait_for(self._pending.join(), timeout=self._settings.shutdown_grace_s)
            except TimeoutError:
                log.warning("%d outbox rows left for the relay of the next start", self._pending.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def relay_once(self) -> int:
        """Publish and delete committed rows older than the grace period; return how many went out."""
        grace = self._settings.outbox_relay_grace_s
        async with self._database.transaction() as connection:
            result = await connection.execute(
                select(*(self._table.c[name] for name in OutboxRow.__slots__))
                .where(self._table.c.created_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, grace))
                .order_by(self._table.c.id)
                .limit(self._settings.outbox_relay_batch_size)
                .with_for_update(skip_locked=True)
            )
            rows = [OutboxRow(**row._mapping) for row in result]
            if not rows:
                return 0
            confirmed = await self._publish_all(rows)
            if confirmed:
                await connection.execute(delete(self._table).where(self._table.c.id.in_(confirmed)))
        metrics.OUTBOX_RELAYED.inc(len(confirmed))
        log.info("outbox relay published %d of %d left-behind events", len(confirmed), len(rows))
        return len(confirmed)

    async def backlog(self) -> tuple[int, float]:
        """How many rows wait for the broker, and the age in seconds of the oldest."""
        async with self._database.engine.connect() as connection:
            count, oldest_age = (
                await connection.execute(
                    select(
                        func.count(),
                        func.coalesce(func.extract("epoch", func.now() - func.min(self._table.c.created_at)), 0),
                    ).select_from(self._table)
                )
            ).one()
        return int(count), float(oldest_age)

    async def _publish_all(self, rows: Sequence[OutboxRow]) -> list[int]:
        outcomes = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
        confirmed = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                confirmed.append(row.id)
            elif isinstance(outcome, BrokerUnavailable):
                log.warning("outbox row %d (%s) not published yet: %s", row.id, row.event_type, outcome)
            elif isinstance(outcome, Exception):
                log.error("outbox row %d (%s) failed to publish: %r", row.id, row.event_type, outcome)
            else:
                raise outcome
        return confirmed

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
                confirmed = await self._publish_all(batch)
                if confirmed:
                    async with self._database.transaction() as connection:
                        await connection.execute(delete(self._table).where(self._table.c.id.in_(confirmed)))
            except Exception as exc:
                # The rows are committed: the relay publishes them later. Nothing is lost here.
                level = logging.WARNING if is_dependency_failure(exc) else logging.ERROR
                log.log(level, "outbox dispatch deferred to the relay: %r", exc)
            finally:
                for _ in batch:
                    self._pending.task_done()

    async def _relay_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.outbox_relay_interval_s)
            try:
                while await self.relay_once() >= self._settings.outbox_relay_batch_size:
                    pass  # a full batch: more may be waiting
                count, oldest_age = await self.backlog()
                metrics.OUTBOX_BACKLOG.set(count)
                metrics.OUTBOX_OLDEST_AGE.set(oldest_age)
            except Exception as exc:
                level = logging.WARNING if is_dependency_failure(exc) else logging.ERROR
                log.log(level, "outbox relay pass failed, retrying: %r", exc)
