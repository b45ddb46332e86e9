"""The base consumer: everything between a delivery and a handler, so handlers stay small.

A handler is a typed function, `async def handle(event: UserRegistered, ctx: MessageContext)`.
It signals its outcome by raising (never by returning a flag):
- returns normally: its effects are committed, the message is acknowledged;
- raises `Reject`: the message can never succeed and is dead-lettered at once;
- raises anything else: the message is retried after a growing delay through the queue's
  `.retry` companion, and dead-lettered after `max_delivery_attempts` attempts;
- a database outage is not the message's fault: it is retried without using up an attempt.

The consumer acknowledges only after the handler's transaction committed. Idempotency: the
event id is recorded in `processed_events` inside that same transaction, so a redelivered or
duplicated event is recognised and acknowledged without its effects being applied again.
A malformed or schema-invalid message is dead-lettered at once, with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, ConsumerTag
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common import correlation, metrics
from common.broker import PUBLISHED_AT_HEADER, BrokerUnavailable
from common.database import is_dependency_failure, processed_events_table
from common.events import Event
from common.outbox import UnitOfWork
from common.runtime import Resources, Runtime
from common.settings import ServiceSettings
from common.topology import ConsumedQueue, declare_queue

log = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=Event)

ATTEMPT_HEADER = "x-attempt"
LAST_ERROR_HEADER = "x-last-error"
DEAD_LETTER_REASON_HEADER = "x-dead-letter-reason"
_BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")
_MAX_HEADER_TEXT = 1000


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
        processed = processed_events_table(self._runtime.database.metadata)
        async with self._runtime.outbox.transaction() as unit:
            recorded = await unit.connection.execute(
                pg_insert(processed)
                .values(consumer=self.queue.name, event_id=str(self.event.event_id))
                .on_conflict_do_nothing()
                .returning(processed.c.event_id)
            )
            if recorded.first() is None:
                raise DuplicateDelivery
            yield unit
        self.committed = True

    async def already_processed(self) -> bool:
        processed = processed_events_table(self._runtime.database.metadata)
        async with self._runtime.database.engine.connect() as connection:
            found = await connection.execute(
                select(processed.c.event_id).where(
                    processed.c.consumer == self.queue.name,
                    processed.c.event_id == str(self.event.event_id),
                )
            )
            return found.first() is not None


Handler = Callable[[EventT, MessageContext[EventT]], Awaitable[None]]


def handled_event_type(handler: Callable[..., Awaitable[None]]) -> type[Event]:
    """The event class a handler declares for its first parameter."""
    parameters = list(inspect.signature(handler, eval_str=True).parameters.values())
    if not parameters:
        raise TypeError(f"{handler!r} must take the event as its first parameter")
    annotation = parameters[0].annotation
    if not (inspect.isclass(annotation) and issubclass(annotation, Event)):
        raise TypeError(f"{handler!r}: annotate the first parameter with the Event subclass it handles")
    return annotation


def decode(message: AbstractIncomingMessage, event_type: type[EventT]) -> EventT:
    if message.content_type not in (None, "application/json"):
        raise PoisonMessage(f"unsupported content type {message.content_type!r}")
    try:
        return event_type.model_validate_json(message.body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}" for error in exc.errors()
        )
        raise PoisonMessage(f"not a valid {event_type.__name__}: {problems}") from exc


def retry_delay_s(settings: ServiceSettings, failed_attempt: int) -> float:
    """Back-off before attempt `failed_attempt + 1`: base, base x factor, base x factor^2, ... capped."""
    delay = settings.retry_base_delay_s * settings.retry_backoff_factor ** (failed_attempt - 1)
    return min(delay, settings.retry_max_delay_s)


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_HEADER_TEXT else text[: _MAX_HEADER_TEXT - 3] + "..."


class Consumer(Generic[EventT]):
    """Consumes one queue with one handler, on a channel of its own with a bounded prefetch."""

    def __init__(
        self,
        queue: ConsumedQueue,
        handler: Handler[EventT],
        runtime: Runtime,
        *,
        prefetch_count: int | None = None,
    ) -> None:
        declared = handled_event_type(handler)
        if not issubclass(queue.event, declared):
            raise TypeError(f"{queue.name} carries {queue.event.__name__}, but its handler takes {declared.__name__}")
        self.queue = queue
        self._handler = handler
        self._runtime = runtime
        self._prefetch_count = prefetch_count or runtime.settings.prefetch_count
        self._channel: AbstractChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._consumer_tag: ConsumerTag | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        self._channel = await self._runtime.broker.open_channel(publisher_confirms=True)
        await self._channel.set_qos(prefetch_count=self._prefetch_count)
        self._amqp_queue = await declare_queue(self._channel, self.queue)
        self._consumer_tag = await self._amqp_queue.consume(self._on_message, no_ack=False)
        log.info("consuming %s (prefetch %d)", self.queue.name, self._prefetch_count)

    async def stop(self, grace_s: float) -> None:
        """Stop taking deliveries, let in-flight handlers finish (up to `grace_s`), close the channel.
        Whatever is still unacknowledged then goes back to the queue for another consumer."""
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
        self._in_flight += 1
        self._idle.clear()
        metrics.HANDLERS_IN_FLIGHT.labels(queue=self.queue.name).inc()
        try:
            with correlation.bound(message.correlation_id or correlation.new_correlation_id(), message.message_id):
                outcome = await self._process(message)
            metrics.MESSAGES_CONSUMED.labels(queue=self.queue.name, outcome=outcome).inc()
        finally:
            metrics.HANDLERS_IN_FLIGHT.labels(queue=self.queue.name).dec()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> str:
        try:
            event = decode(message, self.queue.event)
        except PoisonMessage as exc:
            log.error("dead-lettering a poison message from %s: %s", self.queue.name, exc)
            return await self._settle(message, self._dead_letter(message, str(exc), exc), "dead_lettered")

        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 1))
        context = MessageContext(self.queue, event, attempt, self._runtime)
        started = time.perf_counter()
        try:
            if await context.already_processed():
                raise DuplicateDelivery
            await self._handler(event, context)
            if not context.committed:
                async with context.transaction():
                    pass  # the handler had nothing to write: record the event as processed
        except DuplicateDelivery:
            log.info("%s %s already processed; acknowledging the duplicate", event.event_type, event.event_id)
            return await self._settle(message, None, "duplicate")
        except Reject as exc:
            log.error("handler rejected %s %s: %s", event.event_type, event.event_id, exc)
            return await self._settle(
                message, self._dead_letter(message, f"rejected by handler: {exc}", exc), "dead_lettered"
            )
        except Exception as exc:
            if is_dependency_failure(exc):
                delay = self._runtime.settings.dependency_retry_delay_s
                log.warning(
                    "a dependency is down while handling %s; redelivering in %.1fs: %r", event.event_id, delay, exc
                )
                return await self._settle(message, self._retry(message, attempt, delay, exc), "deferred")
            if attempt >= self._runtime.settings.max_delivery_attempts:
                log.exception(
                    "%s %s failed on its last attempt (%d); dead-lettering", event.event_type, event.event_id, attempt
                )
                reason = f"failed after {attempt} attempts: {type(exc).__name__}: {exc}"
                return await self._settle(message, self._dead_letter(message, reason, exc), "dead_lettered")
            delay = retry_delay_s(self._runtime.settings, attempt)
            log.warning(
                "%s %s failed on attempt %d; retrying in %.1fs: %r",
                event.event_type,
                event.event_id,
                attempt,
                delay,
                exc,
            )
            return await self._settle(message, self._retry(message, attempt + 1, delay, exc), "retried")

        metrics.HANDLER_DURATION.labels(queue=self.queue.name).observe(time.perf_counter() - started)
        published_at_ms = (message.headers or {}).get(PUBLISHED_AT_HEADER)
        if isinstance(published_at_ms, int):
            metrics.END_TO_END_LATENCY.labels(queue=self.queue.name).observe(
                max(0.0, time.time() - published_at_ms / 1000)
            )
        return await self._settle(message, None, "acked")

    async def _settle(
        self, message: AbstractIncomingMessage, forward: Coroutine[Any, Any, None] | None, outcome: str
    ) -> str:
        """Forward the message (to retry or dead-letter) if needed, then acknowledge it. If the
        forward cannot be confirmed, the delivery goes back to the queue instead of being lost."""
        if forward is not None:
            try:
                await forward
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, BrokerUnavailable) else logging.ERROR
                log.log(
                    level, "could not forward %s (%r); returning it to %s", message.message_id, exc, self.queue.name
                )
                await self._requeue(message)
                return "requeued"
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
        await self._forward(message, headers, self.queue.retry_queue, expiration_s=delay_s)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str, error: BaseException) -> None:
        headers = self._forwarded_headers(message)
        headers[DEAD_LETTER_REASON_HEADER] = _truncate(reason)
        headers["x-dead-lettered-by"] = self._runtime.settings.service_name
        headers["x-original-queue"] = self.queue.name
        headers["x-exception-type"] = type(error).__name__
        await self._forward(message, headers, self.queue.dead_letter_queue, expiration_s=None)

    async def _forward(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], queue_name: str, *, expiration_s: float | None
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
            expiration=expiration_s,
        )
        await self._runtime.broker.publish_message(copy, exchange="", routing_key=queue_name)
