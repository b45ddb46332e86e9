"""Publishing: confirmed, persistent, and loud when a message cannot be routed."""

from __future__ import annotations

import asyncio
import socket
import time

import aio_pika
import pytest
from yarl import URL

from common.broker import Broker, BrokerUnavailable, UnroutableMessage, encode_event
from common.events import UserRegistered
from common.settings import ServiceSettings
from common.topology import PRODUCT_UPDATES, QUEUES, declare_topology
from tests.integration.conftest import Ping, core_settings
from tests.support.infra import Infra
from tests.support.rabbitmq import Management
from tests.support.tcp_proxy import TcpRelay
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_publish_returns_once_the_message_is_in_the_queue(
    broker: Broker, test_queue, management: Management
) -> None:
    ping = Ping(note="confirmed")
    await broker.publish_message(encode_event(ping, app_id="coretest"), exchange="", routing_key=test_queue.name)

    # No waiting: a returned publish was confirmed, so the broker already holds it.
    [message] = await management.take(test_queue.name)
    properties = message["properties"]
    assert properties["message_id"] == str(ping.event_id)
    assert properties["correlation_id"] == ping.correlation_id
    assert properties["delivery_mode"] == 2, "messages must be persistent"
    assert properties["content_type"] == "application/json"
    assert properties["type"] == "Ping"
    assert properties["timestamp"] > 0
    assert Ping.model_validate_json(message["payload"]) == ping


async def test_unroutable_publish_raises(broker: Broker) -> None:
    with pytest.raises(UnroutableMessage):
        await broker.publish_message(
            encode_event(Ping(note="lost?"), app_id="coretest"), exchange="", routing_key="no_such_queue"
        )


async def test_fanout_publish_without_bound_queues_raises(broker: Broker) -> None:
    # An exchange with nothing bound to it would silently drop the message without `mandatory`.
    channel = await broker.open_channel()
    await channel.declare_exchange("coretest_unbound", aio_pika.ExchangeType.FANOUT, auto_delete=True)
    exchange = await channel.get_exchange("coretest_unbound")
    with pytest.raises(aio_pika.exceptions.PublishError):
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="", mandatory=True)
    await channel.close()


async def test_publishing_an_event_follows_its_route(settings: ServiceSettings, management: Management) -> None:
    user_service = Broker(settings.model_copy(update={"service_name": "userservice"}))
    await user_service.connect()
    event = UserRegistered(user_id=7, email="route@example.com")
    try:
        await user_service.publish(event)
    finally:
        await user_service.close()
    taken = await management.take("user_registered_queue", count=50)
    assert str(event.event_id) in {message["properties"]["message_id"] for message in taken}


async def test_fanout_copies_to_every_bound_queue(broker: Broker, management: Management) -> None:
    bound = [queue.name for queue in QUEUES if queue.exchange == PRODUCT_UPDATES]
    assert len(bound) == 3
    for name in bound:
        await management.take(name, count=1000)  # start from empty queues
    channel = await broker.open_channel()
    exchange = await channel.get_exchange(PRODUCT_UPDATES.name)
    await exchange.publish(aio_pika.Message(b"copy me", delivery_mode=2), routing_key="", mandatory=True)
    await channel.close()
    for name in bound:
        taken = await management.take(name, count=10)
        assert [message["payload"] for message in taken] == ["copy me"], f"{name} did not get exactly one copy"


async def test_topology_declaration_is_idempotent(broker: Broker) -> None:
    channel = await broker.open_channel()
    first = await declare_topology(channel)
    second = await declare_topology(channel)
    assert first.keys() == second.keys()
    await channel.close()


async def test_publish_without_a_connection_is_refused(settings: ServiceSettings) -> None:
    never_connected = Broker(settings.model_copy(update={"service_name": "userservice"}))
    with pytest.raises(BrokerUnavailable):
        await never_connected.publish(UserRegistered(user_id=1, email="x@example.com"))
    with pytest.raises(BrokerUnavailable):
        await never_connected.open_channel()


async def test_a_broker_that_takes_the_socket_but_never_answers_fails_the_connect_instead_of_hanging(
    infra: Infra,
) -> None:
    """What RabbitMQ does when it is out of file handles: the socket is accepted, the handshake never
    answered. Broker.connect retries within its deadline, then fails with the reason."""
    accepted: list[asyncio.StreamWriter] = []

    async def take_and_ignore(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    silent = await asyncio.start_server(take_and_ignore, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    settings = core_settings(
        infra,
        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{port}/",
        broker_handshake_timeout_s=0.5,
        broker_connect_timeout_s=1.5,
        broker_reconnect_interval_s=0.1,
    )
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnavailable, match=r"no connection to the broker in 1\.5 s"):
            await Broker(settings).connect()
    finally:
        silent.close()
        for writer in accepted:
            writer.close()
        await silent.wait_closed()
    assert time.monotonic() - started < 5.0, "the connect must give up at its deadline"
    assert len(accepted) >= 2, "a handshake that timed out is tried again on a new socket"


def _node_url(infra: Infra, port: int) -> str:
    return str(URL(infra.rabbitmq_url).with_port(port))


async def test_a_node_that_is_down_at_the_start_is_skipped_for_the_next(infra: Infra) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]  # closed again: nothing listens there
    settings = core_settings(infra, rabbitmq_url=_node_url(infra, dead_port), rabbitmq_failover_urls=infra.rabbitmq_url)
    broker = Broker(settings)
    started = time.monotonic()
    await broker.connect()
    try:
        assert broker.is_connected
        assert time.monotonic() - started < settings.broker_reconnect_interval_s + 5
    finally:
        await broker.close()


async def test_losing_the_node_it_is_connected_to_moves_the_connection_to_the_next_one(
    infra: Infra, test_queue, management: Management
) -> None:
    """Node A is a relay to the broker that the test takes away; node B is the broker itself. Publishing
    works through A, fails while the connection is down, and works again through B."""
    broker_url = URL(infra.rabbitmq_url)
    node_a = TcpRelay(broker_url.host or "127.0.0.1", broker_url.port or 5672)
    await node_a.start()
    settings = core_settings(
        infra,
        rabbitmq_url=_node_url(infra, node_a.port),
        rabbitmq_failover_urls=infra.rabbitmq_url,
        broker_reconnect_interval_s=0.2,
    )
    broker = Broker(settings)
    await broker.connect()
    try:
        before = Ping(note="through node A")
        await broker.publish_message(encode_event(before, app_id="coretest"), exchange="", routing_key=test_queue.name)
        await node_a.stop()

        async def published_again() -> Ping | None:
            after = Ping(note="through node B")
            try:
                await broker.publish_message(
                    encode_event(after, app_id="coretest"), exchange="", routing_key=test_queue.name
                )
            except BrokerUnavailable:
                return None
            return after

        after = await eventually(published_again, timeout=20, message="never reconnected to node B")
        ids = {message["properties"]["message_id"] for message in await management.take(test_queue.name, count=10)}
        assert ids == {str(before.event_id), str(after.event_id)}
    finally:
        await broker.close()
        await node_a.stop()
