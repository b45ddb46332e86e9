"""The RabbitMQ client: one robust connection per process, confirmed and mandatory publishing.

Reliability settings are all explicit here, because aio-pika's defaults are not the safe ones:
- messages are persistent (the library default is transient);
- the publishing channel waits for publisher confirms and uses `mandatory=True` with
  `on_return_raises=True`, so an unroutable message raises instead of vanishing;
- the connection is robust: after a broker restart or a forced close it reconnects every
  `broker_reconnect_interval_s` and restores channels, queues and consumers by itself; given other
  nodes of a cluster (`rabbitmq_failover_urls`), it moves on to the next one while it is down;
- publishing while disconnected raises `BrokerUnavailable` at once instead of hanging;
- a nacked publish trades the publishing channel for a new one (see `_renew_publish_channel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from yarl import URL

from common import metrics
from common.events import Event
from common.settings import ServiceSettings
from common.topology import (
    EXCHANGES,
    QUEUES,
    ConsumedQueue,
    Exchange,
    declare_retry_tiers,
    declare_topology,
    retry_tier,
    route_for_publisher,
)

log = logging.getLogger(__name__)

PUBLISHED_AT_HEADER = "x-published-at-ms"
CONTENT_TYPE = "application/json"


def _address(url: str) -> str:
    """host:port of a broker URL, for logs (never the credentials)."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


class BrokerUnavailable(Exception):
    """The broker cannot take the message now (down, reconnecting, or no confirm in time)."""


class UnroutableMessage(Exception):
    """The broker returned a mandatory message: no queue is bound for it. A topology bug."""


def encode_event(event: Event, *, app_id: str, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    return build_message(
        body=event.model_dump_json().encode(),
        event_id=str(event.event_id),
        event_type=event.event_type,
        correlation_id=event.correlation_id,
        app_id=app_id,
        headers=headers,
    )


def build_message(
    *,
    body: bytes,
    event_id: str,
    event_type: str,
    correlation_id: str,
    app_id: str,
    headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    now = time.time()
    return aio_pika.Message(
        body=body,
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
        correlation_id=correlation_id,
        type=event_type,
        app_id=app_id,
        timestamp=datetime.fromtimestamp(now, UTC),
        # AMQP timestamps have one-second resolution; end-to-end latency needs milliseconds.
        headers={**(headers or {}), PUBLISHED_AT_HEADER: int(now * 1000)},
    )


class Broker:
    """Owns the process's connection, its publishing channel and the declared topology."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        exchanges: tuple[Exchange, ...] = EXCHANGES,
        queues: tuple[ConsumedQueue, ...] = QUEUES,
    ) -> None:
        self._settings = settings
        self._exchange_specs = exchanges
        self._queue_specs = queues
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._failover: asyncio.Task[None] | None = None
        self._retry_delays_s: set[float] = set()
        self._channel_renewed_at = float("-inf")
        self._renewals: set[asyncio.Task[None]] = set()

    @property
    def connection_name(self) -> str:
        return self._settings.instance_name

    @property
    def is_connected(self) -> bool:
        connection = self._connection
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and self._publish_channel is not None
            and not self._publish_channel.is_closed
        )

    async def connect(self) -> None:
        """Connect (waiting up to `broker_connect_timeout_s` for the broker) and declare the topology."""
        deadline = time.monotonic() + self._settings.broker_connect_timeout_s
        urls = self._settings.rabbitmq_urls
        attempt = 0
        while True:
            url = urls[attempt % len(urls)]
            attempt += 1
            try:
                self._connection = await aio_pika.connect_robust(
                    url,
                    reconnect_interval=self._settings.broker_reconnect_interval_s,
                    client_properties={"connection_name": self.connection_name},
                    timeout=self._settings.broker_handshake_timeout_s,
                )
                break
            except (aiormq.exceptions.AMQPConnectionError, ConnectionError, OSError, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(
                        f"no connection to the broker in {self._settings.broker_connect_timeout_s:g} s: {exc!r}"
                    ) from exc
                log.warning("broker at %s not reachable yet (%r); retrying", _address(url), exc)
                if attempt % len(urls):
                    continue  # the next node at once; after a round of them, wait
                await asyncio.sleep(self._settings.broker_reconnect_interval_s)
        try:
            async with asyncio.timeout(max(self._settings.broker_handshake_timeout_s, deadline - time.monotonic())):
                self._publish_channel = await self.open_channel(publisher_confirms=True)
                self._exchanges = await declare_topology(self._publish_channel, self._exchange_specs, self._queue_specs)
        except TimeoutError as exc:
            await self._connection.close()
            raise BrokerUnavailable("the broker took the connection but did not declare the topology in time") from exc
        if len(urls) > 1:
            self._failover = asyncio.create_task(
                self._fail_over_while_down(self._connection, urls, (attempt - 1) % len(urls)),
                name="broker-failover",
            )
        log.info(
            "connected to the broker at %s and declared the topology",
            _address(url),
            extra={"connection": self.connection_name},
        )

    async def _fail_over_while_down(self, connection: AbstractRobustConnection, urls: list[str], current: int) -> None:
        """The robust connection reconnects to the address it has: while it is down, point it at the next
        node every reconnect interval, so losing a node costs a reconnect, not an outage."""
        while True:
            await asyncio.sleep(self._settings.broker_reconnect_interval_s)
            if connection.is_closed:
                return
            if connection.connected.is_set():
                continue
            current = (current + 1) % len(urls)
            connection.url = URL(urls[current])
            log.warning("broker connection down; the next attempt goes to %s", _address(urls[current]))

    async def declare_retry_tiers(self, delays_s: Iterable[float]) -> None:
        """Declare the retry tiers of `delays_s` (idempotent; each consumer names those it uses) and keep
        their exchanges for forwarding to them. The robust channel declares them again after a reconnect."""
        if self._publish_channel is None:
            raise BrokerUnavailable("not connected")
        delays_s = set(delays_s)
        self._retry_delays_s |= delays_s
        missing = [delay_s for delay_s in delays_s if retry_tier(delay_s) not in self._exchanges]
        if missing:
            self._exchanges.update(await declare_retry_tiers(self._publish_channel, missing))

    async def open_channel(self, *, publisher_confirms: bool = True) -> AbstractChannel:
        if self._connection is None:
            raise BrokerUnavailable("not connected")
        return await self._connection.channel(publisher_confirms=publisher_confirms, on_return_raises=True)

    def _renew_publish_channel_soon(self) -> None:
        """At most once per reconnect interval, however many publishes are nacked meanwhile."""
        recently = time.monotonic() - self._channel_renewed_at < self._settings.broker_reconnect_interval_s
        if self._connection is None or recently:
            return
        self._channel_renewed_at = time.monotonic()
        renewal = asyncio.create_task(self._renew_publish_channel(), name="broker-publish-channel-renewal")
        self._renewals.add(renewal)
        renewal.add_done_callback(self._renewals.discard)

    async def _renew_publish_channel(self) -> None:
        """Publish on a new channel from now on; close the old one once its pending confirms had their time.

        A RabbitMQ 3.10 channel that first publishes to a quorum queue while the queue's leader is gone (a
        node lost, the connection moved to another) keeps addressing the dead leader: the broker nacks every
        later publish to that queue on that channel for half a minute or more, while a channel opened after
        the new leader's election publishes at once (measured with `make cluster`; the publisher test in
        tests/faults/test_cluster.py fails without this). A nack is otherwise rare (a queue refusing
        publishes), so a new channel costs nothing on the usual path. The new channel declares what the
        old one did, so a reconnect to a node that lost its definitions restores them as before."""
        old = self._publish_channel
        channel: AbstractChannel | None = None
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                channel = await self.open_channel(publisher_confirms=True)
                exchanges = await declare_topology(channel, self._exchange_specs, self._queue_specs)
                exchanges.update(await declare_retry_tiers(channel, self._retry_delays_s))
        except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError, BrokerUnavailable) as exc:
            log.warning("could not open a new publishing channel after a nack (%r); the next nack tries again", exc)
            if channel is not None:
                with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
                    await channel.close()
            return
        self._publish_channel, self._exchanges = channel, exchanges
        log.warning("the broker nacked a publish: publishing on a new channel")
        if old is not None:
            await asyncio.sleep(self._settings.publish_timeout_s)
            with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
                await old.close()

    async def close(self) -> None:
        for renewal in list(self._renewals):
            renewal.cancel()
        if self._failover is not None:
            self._failover.cancel()
            self._failover = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
            self._publish_channel = None

    async def publish(self, event: Event, *, headers: dict[str, Any] | None = None) -> None:
        """Publish `event` where the topology routes its type; return once the broker confirmed it."""
        route = route_for_publisher(event, self._settings.service_name)
        message = encode_event(event, app_id=self._settings.service_name, headers=headers)
        await self.publish_message(message, exchange=route.exchange.name, routing_key=route.routing_key)

    async def publish_message(
        self, message: aio_pika.Message, *, exchange: str, routing_key: str, event_type_label: str | None = None
    ) -> None:
        """Publish a prepared message; raise `BrokerUnavailable` or `UnroutableMessage` unless confirmed.
        `event_type_label` names it in the metrics when its `type` came from elsewhere (a forwarded copy):
        a label taken from what any publisher wrote would make the series unbounded."""
        if self._publish_channel is None:
            raise BrokerUnavailable("not connected to the broker")
        target = self._exchanges.get(exchange)
        if target is None:
            raise LookupError(f"exchange {exchange!r} is not in the declared topology")
        outcome = "confirmed"
        try:
            await target.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self._settings.publish_timeout_s
            )
        except aiormq.exceptions.PublishError as exc:
            outcome = "returned"
            raise UnroutableMessage(
                f"the broker could not route {message.type} to exchange {exchange!r} with routing key {routing_key!r}"
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            outcome = "nacked"
            self._renew_publish_channel_soon()
            raise BrokerUnavailable(f"the broker refused {message.type}: {exc}") from exc
        except (
            aiormq.exceptions.ChannelInvalidStateError,
            aiormq.exceptions.AMQPError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            outcome = "unavailable"
            raise BrokerUnavailable(f"the broker is unavailable: {type(exc).__name__}: {exc}") from exc
        finally:
            metrics.MESSAGES_PUBLISHED.labels(
                exchange=exchange or "(default)",
                event_type=event_type_label or message.type or "unknown",
                outcome=outcome,
            ).inc()
