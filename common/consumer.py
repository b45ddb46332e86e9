"""The base consumer: everything between a delivery and a handler, so handlers stay small.

A handler is a typed function, `async def handle(event: UserRegistered, ctx: MessageContext)`.
It signals its outcome by raising (never by returning a flag):
- returns normally: its effects are committed, the message is acknowledged;
- raises `Reject`: the message can never succeed and is dead-lettered at once;
- raises anything else: the message is retried after a growing delay through the queue's
  `.retry` companion, and dead-lettered after `max_delivery_attempts` attempts;
- a database outage is not the message's fault: it is retried without using up an attempt;
- raises after its transaction committed: its effects stand, the message is acknowledged (and the
  failure logged), since a retry would find the event processed and do nothing anyway.

The consumer acknowledges only after the handler's transaction committed. Idempotency: the
event id is recorded in `processed_events` inside that same transaction, so a redelivered or
duplicated event is recognised and acknowledged without its effects being applied again. A handler
that works before its transaction (an email sent, a gateway called) is subscribed as
`CheckProcessedFirst(handler)`, and a known duplicate does not reach it at all.
A malformed or schema-invalid message is dead-lettered at once, with the reason in its headers; so
is one whose headers the consumer cannot read (an `x-attempt` that is not a positive integer). Every
delivery is settled: nothing a publisher puts in a message can leave it unacknowledged.

High-volume queues can be consumed in batches (`Batched`): the handler takes a list of events
and commits them in one transaction, with the same guarantees per message. See `BatchConsumer`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args, get_origin

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, ConsumerTag
from pydantic import ValidationError
from sqlalchemy import Table, Text, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common import correlation, metrics
from common.broker import PUBLISHED_AT_HEADER
from common.database import Database, is_dependency_failure, processed_events_table
from common.events import Event
from common.outbox import UnitOfWork
from common.runtime import Resources, Runtime
from common.settings import ServiceSettings
from common.sql import Connection, Statement
from common.topology import ConsumedQueue, declare_queue, retry_tier

log = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=Event)

ATTEMPT_HEADER = "x-attempt"
LAST_ERROR_HEADER = "x-last-error"
DEAD_LETTER_REASON_HEADER = "x-dead-letter-reason"
_BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")
_MAX_HEADER_TEXT = 1000
# Far beyond any retry budget: a larger attempt number is not one this fleet wrote.
_MAX_ATTEMPT = 10_000
# Holding a delivery whose forward to a retry or dead-letter queue was not confirmed: the next try after
# these delays (growing, capped) rather than returning it to its queue at once (which would run its
# handler again, and count towards the broker's delivery limit).
_FORWARD_RETRY_FIRST_S = 0.5
_FORWARD_RETRY_MAX_S = 10.0


class Reject(Exception):
    """Raise from a handler when the message can never succeed: it is dead-lettered at once."""


class PoisonMessage(Exception):
    """The delivery is not a valid event for its queue."""


class DuplicateDelivery(Exception):
    """The event was already processed by this consumer."""


class MessageContext(Generic[EventT]):
    """What a handler gets besides its event: settings, resources and one transaction."""

    def __init__(self, queue: ConsumedQueue, event: EventT, attempt: int, runtime: Runtime) -> None:
        self.queue = queue
        self.event = event
        self.attempt = attempt
        self._runtime = runtime
        self.committed = False

    @property
    def settings(self) -> ServiceSettings:
        return self._runtime.settings

    @property
    def resources(self) -> Resources:
        return self._runtime.resources

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """The handler's effects and follow-up events, committed together with the processed-event
        record. Raises `DuplicateDelivery` before the body runs if the event was already handled."""
        if self.committed:
            raise RuntimeError("a handler commits its effects in one transaction")
        async with self._runtime.outbox.transaction() as unit:
            if not await _record_processed(unit.connection, self._runtime.database, self.queue, [self.event]):
                raise DuplicateDelivery
            yield unit
        self.committed = True

    async def already_processed(self) -> bool:
        return bool(await _already_processed(self._runtime.database, self.queue, [self.event]))


class _Idempotency:
    """The statements on a service's `processed_events`, compiled once per table."""

    def __init__(self, processed: Table) -> None:
        event_ids = bindparam("event_ids", type_=ARRAY(UUID(as_uuid=False)))
        consumer = bindparam("consumer", type_=Text)
        event_id = func.unnest(event_ids).column_valued("event_id")
        # Sorted, so two transactions recording overlapping sets lock their rows in the same order. One
        # array parameter whatever the number of events: one statement, prepared once per connection.
        self.record = Statement(
            pg_insert(processed)
            .from_select(["consumer", "event_id"], select(consumer, event_id).order_by(event_id))
            .on_conflict_do_nothing()
            .returning(processed.c.event_id)
        )
        self.find = Statement(
            select(processed.c.event_id).where(
                processed.c.consumer == consumer, processed.c.event_id == any_(event_ids)
            )
        )


_STATEMENTS: dict[Table, _Idempotency] = {}


def _idempotency(database: Database) -> _Idempotency:
    table = processed_events_table(database.metadata)
    statements = _STATEMENTS.get(table)
    if statements is None:
        statements = _STATEMENTS[table] = _Idempotency(table)
    return statements


async def _record_processed(
    connection: Connection, database: Database, queue: ConsumedQueue, events: Sequence[Event]
) -> set[str]:
    """Record `events` as processed by `queue`'s consumer; return the ids recorded now (not before)."""
    event_ids = list({str(event.event_id) for event in events})
    recorded = await connection.fetch(_idempotency(database).record, consumer=queue.name, event_ids=event_ids)
    return {str(row[0]) for row in recorded}


async def _already_processed(database: Database, queue: ConsumedQueue, events: Sequence[Event]) -> set[str]:
    """The ids among `events` that `queue`'s consumer has already processed."""
    found = await database.fetch(
        _idempotency(database).find, consumer=queue.name, event_ids=[str(event.event_id) for event in events]
    )
    return {str(row[0]) for row in found}


class BatchContext(Generic[EventT]):
    """What a batch handler gets besides its events: settings, resources and one transaction."""

    def __init__(self, queue: ConsumedQueue, events: Sequence[EventT], runtime: Runtime) -> None:
        self.queue = queue
        self.events = events
        self._runtime = runtime
        self.committed = False

    @property
    def settings(self) -> ServiceSettings:
        return self._runtime.settings

    @property
    def resources(self) -> Resources:
        return self._runtime.resources

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """The batch's effects, committed together with the processed-event record of every event in
        it. Raises `DuplicateDelivery` before the body runs if another consumer (a replica) handled
        any of them meanwhile; the consumer then runs the handler again without those."""
        if self.committed:
            raise RuntimeError("a batch handler commits its effects in one transaction")
        async with self._runtime.outbox.transaction() as unit:
            recorded = await _record_processed(unit.connection, self._runtime.database, self.queue, self.events)
            if len(recorded) < len({event.event_id for event in self.events}):
                raise DuplicateDelivery
            yield unit
        self.committed = True


Handler = Callable[[EventT, MessageContext[EventT]], Awaitable[None]]
BatchHandler = Callable[[Sequence[EventT], BatchContext[EventT]], Awaitable[None]]


@dataclass(frozen=True)
class Batched(Generic[EventT]):
    """Subscribe a batch handler: deliveries are collected until `max_size` are waiting or the
    oldest has waited `max_wait_s`, then handled together in one transaction."""

    handler: BatchHandler[EventT]
    max_size: int
    max_wait_s: float

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.max_wait_s < 0:
            raise ValueError("a batch holds at least one message and waits a non-negative time")


@dataclass(frozen=True)
class CheckProcessedFirst(Generic[EventT]):
    """Subscribe a handler that does slow work, or work outside the database, before its transaction
    (sending an email, waiting for a payment gateway, running a report): the consumer looks the event
    up in `processed_events` before calling the handler, so an event handled already (a redelivery,
    a duplicate publish) is acknowledged without that work being done again.

    Other handlers do not need the look-up and save its database round trip per message: their
    `ctx.transaction()` records the event as processed and raises `DuplicateDelivery` before its body
    runs, so a duplicate changes nothing either way."""

    handler: Handler[EventT]


Subscription = Handler[EventT] | Batched[EventT] | CheckProcessedFirst[EventT]


async def apply_handler(
    handler: Handler[EventT], context: MessageContext[EventT], *, check_processed_first: bool
) -> None:
    """Run `handler` on the context's event and commit its effects with the processed-event record;
    raise `DuplicateDelivery` for an event this consumer handled before. The consumer runs a delivery
    through this, and so does the synchronous fleet's call (common/calls.py): one pipeline for both."""
    if check_processed_first and await context.already_processed():
        raise DuplicateDelivery
    await handler(context.event, context)
    if not context.committed:
        async with context.transaction():
            pass  # the handler had nothing to write: record the event as processed


async def apply_batch_handler(handler: BatchHandler[EventT], context: BatchContext[EventT]) -> None:
    """`apply_handler` for a batch: raises `DuplicateDelivery` if any of its events was handled before."""
    await handler(context.events, context)
    if not context.committed:
        async with context.transaction():
            pass  # the handler had nothing to write: record the events as processed


def _first_parameter_annotation(handler: Callable[..., Awaitable[None]]) -> Any:
    parameters = list(inspect.signature(handler, eval_str=True).parameters.values())
    if not parameters:
        raise TypeError(f"{handler!r} must take the event as its first parameter")
    return parameters[0].annotation


def handled_event_type(handler: Callable[..., Awaitable[None]]) -> type[Event]:
    """The event class a handler declares for its first parameter."""
    annotation = _first_parameter_annotation(handler)
    if not (inspect.isclass(annotation) and issubclass(annotation, Event)):
        raise TypeError(f"{handler!r}: annotate the first parameter with the Event subclass it handles")
    return annotation


def handled_batch_event_type(handler: Callable[..., Awaitable[None]]) -> type[Event]:
    """The event class a batch handler declares for its first parameter (`Sequence[SomeEvent]`)."""
    annotation = _first_parameter_annotation(handler)
    arguments = get_args(annotation)
    origin = get_origin(annotation)
    if not (
        inspect.isclass(origin)
        and issubclass(origin, Sequence)
        and len(arguments) == 1
        and inspect.isclass(arguments[0])
        and issubclass(arguments[0], Event)
    ):
        raise TypeError(f"{handler!r}: annotate the first parameter as Sequence[<the Event subclass it handles>]")
    return arguments[0]


def decode(message: AbstractIncomingMessage, event_type: type[EventT]) -> EventT:
    if message.content_type not in (None, "application/json"):
        raise PoisonMessage(f"unsupported content type {message.content_type!r}")
    return decode_body(message.body, event_type)


def decode_body(body: bytes, event_type: type[EventT]) -> EventT:
    """The event in a JSON body (a delivery's, or a synchronous call's); `PoisonMessage` says what is wrong."""
    try:
        return event_type.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}" for error in exc.errors()
        )
        raise PoisonMessage(f"not a valid {event_type.__name__}: {problems}") from exc


def retry_delay_s(settings: ServiceSettings, failed_attempt: int) -> float:
    """Back-off before attempt `failed_attempt + 1`: base, base x factor, base x factor^2, ... capped."""
    delay = settings.retry_base_delay_s * settings.retry_backoff_factor ** (failed_attempt - 1)
    return min(delay, settings.retry_max_delay_s)


def attempt_of(message: AbstractIncomingMessage) -> int:
    """The attempt this delivery is (1 unless a retry): any publisher can set the header, so it is input."""
    value = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ATTEMPT:
        raise PoisonMessage(f"unreadable {ATTEMPT_HEADER} header {_truncate(repr(value))}: not an attempt number")
    return value


def retry_delays_s(settings: ServiceSettings) -> set[float]:
    """Every back-off a consumer with `settings` can ask for: one retry queue per delay."""
    retries = {retry_delay_s(settings, attempt) for attempt in range(1, settings.max_delivery_attempts)}
    return retries | {settings.dependency_retry_delay_s}


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_HEADER_TEXT else text[: _MAX_HEADER_TEXT - 3] + "..."


def _check_event_type(queue: ConsumedQueue, declared: type[Event]) -> None:
    if not issubclass(queue.event, declared):
        raise TypeError(f"{queue.name} carries {queue.event.__name__}, but its handler takes {declared.__name__}")


class _QueueConsumer:
    """A channel of its own with a bounded prefetch, and the settling of deliveries: acknowledge,
    retry with back-off, defer while a dependency is down, or dead-letter with the reason."""

    def __init__(self, queue: ConsumedQueue, runtime: Runtime, prefetch_count: int) -> None:
        self.queue = queue
        self._runtime = runtime
        self._prefetch_count = prefetch_count
        self._channel: AbstractChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._consumer_tag: ConsumerTag | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        # Metrics label forwarded copies with the queue's own event type, never with what a publisher wrote.
        self._event_type = queue.event.type_name()
        _idempotency(runtime.database)  # compiled now, so the pool prepares it before the first delivery

    async def start(self) -> None:
        metrics.initialise_consumer_series(self.queue.name)
        self._channel = await self._runtime.broker.open_channel(publisher_confirms=True)
        await self._channel.set_qos(prefetch_count=self._prefetch_count)
        self._amqp_queue = await declare_queue(self._channel, self.queue)
        await self._runtime.broker.declare_retry_tiers(retry_delays_s(self._runtime.settings))
        self._consumer_tag = await self._amqp_queue.consume(self._on_message, no_ack=False)
        log.info("consuming %s (prefetch %d)", self.queue.name, self._prefetch_count)

    async def stop(self, grace_s: float) -> None:
        """Stop taking deliveries, let in-flight handlers finish (up to `grace_s`), close the channel.
        Whatever is still unacknowledged then goes back to the queue for another consumer."""
        self._stopping = True
        if self._amqp_queue is not None and self._consumer_tag is not None:
            try:
                await self._amqp_queue.cancel(self._consumer_tag)
            except Exception as exc:  # the channel may already be gone; its deliveries are requeued anyway
                log.warning("cancelling the consumer of %s failed: %r", self.queue.name, exc)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("%d handlers of %s still running at shutdown", self._in_flight, self.queue.name)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError

    def _enter(self, count: int = 1) -> None:
        self._in_flight += count
        self._idle.clear()
        metrics.HANDLERS_IN_FLIGHT.labels(queue=self.queue.name).inc(count)

    def _leave(self, count: int = 1) -> None:
        metrics.HANDLERS_IN_FLIGHT.labels(queue=self.queue.name).dec(count)
        self._in_flight -= count
        if self._in_flight == 0:
            self._idle.set()

    def _observe_end_to_end(self, message: AbstractIncomingMessage) -> None:
        published_at_ms = (message.headers or {}).get(PUBLISHED_AT_HEADER)
        if isinstance(published_at_ms, int) and not isinstance(published_at_ms, bool):
            metrics.END_TO_END_LATENCY.labels(queue=self.queue.name).observe(
                max(0.0, time.time() - published_at_ms / 1000)
            )

    async def _settle_poison(self, message: AbstractIncomingMessage, exc: PoisonMessage) -> str:
        log.error("dead-lettering a poison message from %s: %s", self.queue.name, exc)
        return await self._settle(message, lambda: self._dead_letter(message, str(exc), exc), "dead_lettered")

    async def _settle_failure(
        self, message: AbstractIncomingMessage, event: Event, attempt: int, exc: Exception
    ) -> str:
        """A handler raised while handling `event`: dead-letter, defer or retry its message."""
        if isinstance(exc, Reject):
            log.error("handler rejected %s %s: %s", event.event_type, event.event_id, exc)
            return await self._settle(
                message, lambda: self._dead_letter(message, f"rejected by handler: {exc}", exc), "dead_lettered"
            )
        if is_dependency_failure(exc):
            delay = self._runtime.settings.dependency_retry_delay_s
            log.warning("a dependency is down while handling %s; redelivering in %.1fs: %r", event.event_id, delay, exc)
            return await self._settle(message, lambda: self._retry(message, attempt, delay, exc), "deferred")
        if attempt >= self._runtime.settings.max_delivery_attempts:
            log.error(
                "%s %s failed on its last attempt (%d); dead-lettering",
                event.event_type,
                event.event_id,
                attempt,
                exc_info=exc,
            )
            reason = f"failed after {attempt} attempts: {type(exc).__name__}: {exc}"
            return await self._settle(message, lambda: self._dead_letter(message, reason, exc), "dead_lettered")
        delay = retry_delay_s(self._runtime.settings, attempt)
        log.warning(
            "%s %s failed on attempt %d; retrying in %.1fs: %r",
            event.event_type,
            event.event_id,
            attempt,
            delay,
            exc,
        )
        return await self._settle(message, lambda: self._retry(message, attempt + 1, delay, exc), "retried")

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        forward: Callable[[], Coroutine[Any, Any, None]] | None,
        outcome: str,
    ) -> str:
        """Forward the message (to a retry or the dead-letter queue) if needed, then acknowledge it.

        A forward the broker does not confirm is tried again after a growing delay while the delivery is
        held: returning it to its queue at once would run its handler again (and its work before the
        transaction), and count towards the broker's delivery limit, which dead-letters without a reason.
        Only if the channel is gone (the broker then redelivers) or the consumer stops is it given back."""
        if forward is not None:
            delay = _FORWARD_RETRY_FIRST_S
            while True:
                try:
                    await forward()
                    break
                except Exception as exc:
                    if self._stopping or message.channel.is_closed:
                        log.warning(
                            "could not forward %s (%r); returning it to %s", message.message_id, exc, self.queue.name
                        )
                        await self._requeue(message)
                        return "requeued"
                    log.warning("could not forward %s (%r); trying again in %.1fs", message.message_id, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _FORWARD_RETRY_MAX_S)
        try:
            await message.ack()
        except Exception as exc:  # the channel closed under us: the broker redelivers unacked messages
            log.warning("could not acknowledge %s: %r; the broker will redeliver it", message.message_id, exc)
            return "redelivery_pending"
        return outcome

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.nack(requeue=True)
        except Exception as exc:
            log.warning("could not return %s to its queue: %r; the broker will redeliver it", message.message_id, exc)

    def _forwarded_headers(self, message: AbstractIncomingMessage) -> dict[str, Any]:
        return {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_DEATH_HEADERS}

    async def _retry(
        self, message: AbstractIncomingMessage, next_attempt: int, delay_s: float, error: BaseException
    ) -> None:
        headers = self._forwarded_headers(message)
        headers[ATTEMPT_HEADER] = next_attempt
        headers[LAST_ERROR_HEADER] = _truncate(f"{type(error).__name__}: {error}")
        await self._forward(message, headers, exchange=retry_tier(delay_s), routing_key=self.queue.name)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str, error: BaseException) -> None:
        headers = self._forwarded_headers(message)
        headers[DEAD_LETTER_REASON_HEADER] = _truncate(reason)
        headers["x-dead-lettered-by"] = self._runtime.settings.service_name
        headers["x-original-queue"] = self.queue.name
        headers["x-exception-type"] = type(error).__name__
        await self._forward(message, headers, exchange="", routing_key=self.queue.dead_letter_queue)

    async def _forward(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], *, exchange: str, routing_key: str
    ) -> None:
        copy = aio_pika.Message(
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.type,
            app_id=message.app_id,
            timestamp=message.timestamp,
        )
        await self._runtime.broker.publish_message(
            copy, exchange=exchange, routing_key=routing_key, event_type_label=self._event_type
        )


def _bound_correlation_id(message: AbstractIncomingMessage) -> str:
    return correlation.sanitize_correlation_id(message.correlation_id)


class Consumer(_QueueConsumer, Generic[EventT]):
    """Consumes one queue with one handler, on a channel of its own with a bounded prefetch."""

    def __init__(
        self,
        queue: ConsumedQueue,
        handler: Handler[EventT] | CheckProcessedFirst[EventT],
        runtime: Runtime,
        *,
        prefetch_count: int | None = None,
    ) -> None:
        self._check_processed_first = isinstance(handler, CheckProcessedFirst)
        if isinstance(handler, CheckProcessedFirst):
            handler = handler.handler
        _check_event_type(queue, handled_event_type(handler))
        super().__init__(queue, runtime, prefetch_count or runtime.settings.prefetch_count)
        self._handler = handler

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._enter()
        try:
            with correlation.bound(_bound_correlation_id(message), message.message_id):
                try:
                    outcome = await self._process(message)
                except Exception:
                    # A bug in the consumer itself, not the handler: never leave the delivery unsettled.
                    log.exception("settling a delivery from %s failed; returning it to its queue", self.queue.name)
                    await asyncio.sleep(self._runtime.settings.dependency_retry_delay_s)
                    await self._requeue(message)
                    outcome = "requeued"
            metrics.MESSAGES_CONSUMED.labels(queue=self.queue.name, outcome=outcome).inc()
        finally:
            self._leave()

    async def _process(self, message: AbstractIncomingMessage) -> str:
        try:
            event = decode(message, self.queue.event)
            attempt = attempt_of(message)
        except PoisonMessage as exc:
            return await self._settle_poison(message, exc)

        context = MessageContext(self.queue, event, attempt, self._runtime)
        started = time.perf_counter()
        try:
            await apply_handler(self._handler, context, check_processed_first=self._check_processed_first)
        except DuplicateDelivery:
            log.info("%s %s already processed; acknowledging the duplicate", event.event_type, event.event_id)
            return await self._settle(message, None, "duplicate")
        except Exception as exc:
            if context.committed:
                log.error(
                    "%s %s: the handler raised after its transaction committed; its effects stand, acknowledging",
                    event.event_type,
                    event.event_id,
                    exc_info=exc,
                )
                return await self._settle(message, None, "failed_after_commit")
            return await self._settle_failure(message, event, attempt, exc)

        elapsed = time.perf_counter() - started
        metrics.HANDLER_DURATION.labels(queue=self.queue.name).observe(elapsed)
        self._observe_end_to_end(message)
        if log.isEnabledFor(logging.DEBUG):  # one line per message: follow a correlation id at DEBUG
            log.debug(
                "handled %s from %s in %.1f ms",
                event.event_type,
                self.queue.name,
                elapsed * 1000,
                extra={"event_type": event.event_type, "queue": self.queue.name, "attempt": attempt},
            )
        return await self._settle(message, None, "acked")


@dataclass(frozen=True, slots=True)
class _Delivery(Generic[EventT]):
    message: AbstractIncomingMessage
    event: EventT
    attempt: int


class BatchConsumer(_QueueConsumer, Generic[EventT]):
    """Consumes one queue in batches, with the guarantees the one-message `Consumer` gives each message.

    Deliveries wait in a buffer until `max_size` are there or the oldest has waited `max_wait_s`;
    then one handler call commits the whole batch in one transaction, together with the
    processed-event record of every event in it, and the batch is acknowledged after that commit
    (one `basic.ack` with `multiple` per channel, which halves the broker's work per message).
    Copies inside a batch count once. Events processed before (redeliveries, duplicates) are found
    by the transaction's own record of the batch, without a look-up first: the transaction is rolled
    back before its body runs, and the handler runs again without them. Poison messages are
    dead-lettered one by one.

    If the handler raises for a batch, nothing of it was committed, and its messages are handled
    again one at a time, so a single bad message is retried or dead-lettered on its own and does
    not hold the others back. While a dependency is down, the whole batch is deferred.

    The prefetch must leave room for a full batch; twice `max_size` lets the next batch fill
    while one is being committed. Batches are handled one after another per consumer, by a
    background task the service watches (and starts again should it die).
    """

    def __init__(
        self,
        queue: ConsumedQueue,
        subscription: Batched[EventT],
        runtime: Runtime,
        *,
        prefetch_count: int | None = None,
    ) -> None:
        _check_event_type(queue, handled_batch_event_type(subscription.handler))
        prefetch = prefetch_count or 2 * subscription.max_size
        if prefetch < subscription.max_size:
            raise ValueError(
                f"{queue.name}: a prefetch of {prefetch} can never fill a batch of {subscription.max_size}"
            )
        super().__init__(queue, runtime, prefetch)
        self._handler = subscription.handler
        self._max_size = subscription.max_size
        self._max_wait_s = subscription.max_wait_s
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._task_name = f"batches-{queue.name}"

    async def start(self) -> None:
        self._task_name = self._runtime.tasks.start(self._task_name, self._flush_forever)
        await super().start()

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)
        await self._runtime.tasks.stop(self._task_name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._enter()
        self._buffer.put_nowait(message)

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        batch = [await self._buffer.get()]
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while len(batch) < self._max_size:
            if not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._buffer.get())
            except TimeoutError:
                break
        return batch

    async def _flush_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                outcomes = await self._process(batch)
            except Exception:
                # A bug here must not strand the batch unacknowledged: give it back to the queue.
                log.exception("handling a batch of %d from %s failed unexpectedly", len(batch), self.queue.name)
                await asyncio.sleep(self._runtime.settings.dependency_retry_delay_s)
                for message in batch:
                    await self._requeue(message)
                outcomes = ["requeued"] * len(batch)
            finally:
                self._leave(len(batch))
            for outcome in outcomes:
                metrics.MESSAGES_CONSUMED.labels(queue=self.queue.name, outcome=outcome).inc()

    async def _process(self, messages: Sequence[AbstractIncomingMessage]) -> list[str]:
        outcomes: list[str] = []
        deliveries: list[_Delivery[EventT]] = []
        for message in messages:
            try:
                deliveries.append(_Delivery(message, decode(message, self.queue.event), attempt_of(message)))
            except PoisonMessage as exc:
                with correlation.bound(_bound_correlation_id(message), message.message_id):
                    outcomes.append(await self._settle_poison(message, exc))
        if deliveries:
            outcomes.extend(await self._handle(deliveries))
        return outcomes

    async def _handle(self, deliveries: Sequence[_Delivery[EventT]]) -> list[str]:
        started = time.perf_counter()
        try:
            applied = await self._apply(deliveries)
        except Exception as exc:
            if is_dependency_failure(exc) or len(deliveries) == 1:
                outcomes = []
                for delivery in deliveries:
                    with correlation.bound(_bound_correlation_id(delivery.message), delivery.message.message_id):
                        outcomes.append(
                            await self._settle_failure(delivery.message, delivery.event, delivery.attempt, exc)
                        )
                return outcomes
            log.warning(
                "a batch of %d from %s failed (%r); handling its messages one by one",
                len(deliveries),
                self.queue.name,
                exc,
            )
            outcomes = []
            for delivery in deliveries:
                outcomes.extend(await self._handle([delivery]))
            return outcomes

        metrics.HANDLER_DURATION.labels(queue=self.queue.name).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(queue=self.queue.name).observe(len(applied))
        for delivery in deliveries:
            if delivery.message in applied:
                self._observe_end_to_end(delivery.message)
        acknowledged = await self._ack_all([delivery.message for delivery in deliveries])
        return [
            ("acked" if delivery.message in applied else "duplicate") if ok else "redelivery_pending"
            for delivery, ok in zip(deliveries, acknowledged, strict=True)
        ]

    async def _ack_all(self, messages: Sequence[AbstractIncomingMessage]) -> list[bool]:
        """Acknowledge `messages` with one `multiple` ack per channel; return which were acknowledged.

        Safe because batches are settled in delivery order: when a batch is done, every earlier delivery
        of the channel has been settled already, so the ack covers exactly this batch."""
        by_channel: dict[int, list[AbstractIncomingMessage]] = {}
        for message in messages:
            by_channel.setdefault(id(message.channel), []).append(message)
        acknowledged: dict[int, bool] = {}
        for channel_messages in by_channel.values():
            last = max(channel_messages, key=lambda message: message.delivery_tag or 0)
            try:
                await last.ack(multiple=True)
                ok = True
            except Exception as exc:  # the channel closed under us: the broker redelivers them all
                log.warning(
                    "could not acknowledge a batch from %s: %r; the broker will redeliver it", self.queue.name, exc
                )
                ok = False
            for message in channel_messages:
                acknowledged[id(message)] = ok
        return [acknowledged[id(message)] for message in messages]

    async def _apply(self, deliveries: Sequence[_Delivery[EventT]]) -> set[AbstractIncomingMessage]:
        """Run the handler on the events not processed before; return the messages it applied."""
        fresh: dict[str, _Delivery[EventT]] = {}
        for delivery in deliveries:
            fresh.setdefault(str(delivery.event.event_id), delivery)  # a copy inside the batch counts once
        for _ in range(len(deliveries) + 1):
            if not fresh:
                return set()
            context = BatchContext(self.queue, [delivery.event for delivery in fresh.values()], self._runtime)
            try:
                await apply_batch_handler(self._handler, context)
            except DuplicateDelivery:
                # Rolled back: some were handled before (a redelivery) or meanwhile (a replica). Leave them out.
                done = await _already_processed(self._runtime.database, self.queue, context.events)
                log.info("%d of a batch from %s were handled already; handling the rest", len(done), self.queue.name)
                fresh = {event_id: delivery for event_id, delivery in fresh.items() if event_id not in done}
                continue
            return {delivery.message for delivery in fresh.values()}
        raise RuntimeError(f"a batch from {self.queue.name} kept meeting concurrent duplicates")
