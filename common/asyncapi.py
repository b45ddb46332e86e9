"""The message map as documentation, generated from `common.topology` and `common.events`.

`asyncapi_document()` builds an AsyncAPI 3.0 document: one channel per exchange and per consumed
queue (with its retry and dead-letter companions described), one message per event with its JSON
schema, a `send` operation per publisher and a `receive` operation per consumer. Each service
serves the part it takes part in at `/asyncapi.json`; `docs/asyncapi.json` holds the whole fleet's.
`mermaid_flowchart()` draws the same map for README.md. `python -m devtools.docs` regenerates both
files, and a test fails when they are stale.
"""

from __future__ import annotations

from typing import Any

from common.events import Event
from common.topology import (
    DELIVERY_LIMIT,
    QUEUES,
    ROUTES,
    ConsumedQueue,
    Exchange,
    ExchangeKind,
    Route,
    queues_reached,
    routes_of,
)

ASYNCAPI_VERSION = "3.0.0"


def _queue_channel_id(queue: ConsumedQueue) -> str:
    return queue.name


def _exchange_channel_id(exchange: Exchange) -> str:
    return f"exchange.{exchange.name}"


def _message_ref(event: type[Event]) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{event.type_name()}"}


def _queue_channel(queue: ConsumedQueue) -> dict[str, Any]:
    source = (
        "the default exchange (routing key = queue name)"
        if queue.exchange.is_default
        else (f"the `{queue.exchange.name}` {queue.exchange.kind.value} exchange")
    )
    return {
        "address": queue.name,
        "title": queue.name,
        "description": (
            f"{queue.description} Receives from {source}. Failed deliveries wait in the shared `retry.<delay>ms` "
            f"tier of their back-off delay (routing key `{queue.name}`, which brings them back) and end in "
            f"`{queue.dead_letter_queue}` with the reason in "
            f"`x-dead-letter-reason`; the broker dead-letters after {DELIVERY_LIMIT} redeliveries."
        ),
        "messages": {queue.event.type_name(): _message_ref(queue.event)},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {"name": queue.name, "durable": True, "exclusive": False, "autoDelete": False},
                "bindingVersion": "0.3.0",
            }
        },
    }


def _exchange_channel(exchange: Exchange, events: list[type[Event]]) -> dict[str, Any]:
    return {
        "address": exchange.name,
        "title": f"{exchange.name} ({exchange.kind.value} exchange)",
        "description": exchange.description,
        "messages": {event.type_name(): _message_ref(event) for event in events},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": exchange.name, "type": exchange.kind.value, "durable": True, "autoDelete": False},
                "bindingVersion": "0.3.0",
            }
        },
    }


def _publish_channel_id(route: Route) -> str:
    if route.exchange.is_default:
        return route.routing_key
    return _exchange_channel_id(route.exchange)


def _message(event: type[Event]) -> dict[str, Any]:
    return {
        "name": event.type_name(),
        "title": event.type_name(),
        "summary": (event.__doc__ or event.type_name()).strip().splitlines()[0],
        "contentType": "application/json",
        "correlationId": {"location": "$message.header#/correlation_id"},
        "payload": event.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}"),
    }


def asyncapi_document(service: str | None = None) -> dict[str, Any]:
    """The whole fleet's map, or (with `service`) only the channels that service publishes or consumes."""
    routes = [route for route in ROUTES if service is None or service in route.publishers]
    queues = [queue for queue in QUEUES if service is None or queue.consumer == service]
    if service is not None:
        # A service publishing to an exchange: show which queues that exchange feeds.
        queues += [q for route in routes for q in queues_reached(route) if q not in queues]

    channels: dict[str, Any] = {}
    for queue in queues:
        channels[_queue_channel_id(queue)] = _queue_channel(queue)
    exchanges = {route.exchange for route in routes if not route.exchange.is_default}
    exchanges |= {queue.exchange for queue in queues if not queue.exchange.is_default}
    for exchange in sorted(exchanges, key=lambda item: item.name):
        events = sorted(
            {route.event for route in ROUTES if route.exchange == exchange}, key=lambda event: event.type_name()
        )
        channels[_exchange_channel_id(exchange)] = _exchange_channel(exchange, events)

    operations: dict[str, Any] = {}
    for route in routes:
        for publisher in route.publishers:
            if service is not None and publisher != service:
                continue
            operation = f"{publisher}.send.{route.event.type_name()}"
            if len(routes_of(route.event)) > 1:
                operation += f".{_publish_channel_id(route)}"
            when = f" ({route.condition})" if route.condition else ""
            operations[operation] = {
                "action": "send",
                "title": f"{publisher} publishes {route.event.type_name()}{when}",
                "channel": {"$ref": f"#/channels/{_publish_channel_id(route)}"},
                "messages": [{"$ref": f"#/channels/{_publish_channel_id(route)}/messages/{route.event.type_name()}"}],
                "x-publisher": publisher,
            }
    for queue in queues:
        if service is not None and queue.consumer != service:
            continue
        operations[f"{queue.consumer}.receive.{queue.name}"] = {
            "action": "receive",
            "title": f"{queue.consumer} consumes {queue.name}",
            "channel": {"$ref": f"#/channels/{_queue_channel_id(queue)}"},
            "messages": [{"$ref": f"#/channels/{_queue_channel_id(queue)}/messages/{queue.event.type_name()}"}],
            "x-consumer": queue.consumer,
        }

    events = sorted(
        {route.event for route in routes} | {queue.event for queue in queues}, key=lambda event: event.type_name()
    )
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event in events:
        message = _message(event)
        payload = message["payload"]
        schemas.update(payload.pop("$defs", {}))
        schemas[event.type_name()] = payload
        message["payload"] = {"$ref": f"#/components/schemas/{event.type_name()}"}
        messages[event.type_name()] = message

    title = "Event Fleet message map" if service is None else f"{service} messaging"
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": (
                "Generated from common/topology.py and common/events.py. Every message is persistent JSON "
                "with message_id = event_id, correlation_id, type = event_type and a publish timestamp; "
                "publishers use confirms and mandatory routing; consumers are idempotent on event_id."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:5672", "pathname": "/fleet", "protocol": "amqp", "protocolVersion": "0.9.1"},
            "compose": {"host": "rabbitmq:5672", "pathname": "/", "protocol": "amqp", "protocolVersion": "0.9.1"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _node(name: str) -> str:
    return name.replace(".", "_").replace("-", "_")


def mermaid_flowchart() -> str:
    """Publishers -> exchanges -> queues -> consumers, one edge per hop, labelled with the event."""
    lines = ["flowchart LR"]
    services = sorted({p for route in ROUTES for p in route.publishers} | {q.consumer for q in QUEUES})
    for service in services:
        lines.append(f"    {_node(service)}([{service}])")
    for exchange in sorted(
        {route.exchange for route in ROUTES if not route.exchange.is_default}, key=lambda item: item.name
    ):
        lines.append(f"    x_{_node(exchange.name)}{{{{{exchange.name}<br/>{exchange.kind.value}}}}}")
    for queue in QUEUES:
        lines.append(f"    q_{_node(queue.name)}[[{queue.name}]]")
    for route in ROUTES:
        for publisher in route.publishers:
            target = f"q_{_node(route.routing_key)}" if route.exchange.is_default else f"x_{_node(route.exchange.name)}"
            label = f"{route.event.type_name()}<br/>{route.condition}" if route.condition else route.event.type_name()
            lines.append(f"    {_node(publisher)} -- {label} --> {target}")
    for queue in QUEUES:
        if queue.exchange.kind is ExchangeKind.FANOUT:
            lines.append(f"    x_{_node(queue.exchange.name)} --> q_{_node(queue.name)}")
        lines.append(f"    q_{_node(queue.name)} --> {_node(queue.consumer)}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """One row per route: event, publishers, exchange, and the queues (with consumers) it reaches."""
    rows = ["| Event | Published by | Exchange | Queue -> consumer |", "|---|---|---|---|"]
    for route in ROUTES:
        exchange = "default" if route.exchange.is_default else f"`{route.exchange.name}` ({route.exchange.kind.value})"
        reached = "<br>".join(f"`{q.name}` -> {q.consumer}" for q in queues_reached(route))
        event = f"`{route.event.type_name()}`" + (f" ({route.condition})" if route.condition else "")
        rows.append(f"| {event} | {', '.join(route.publishers)} | {exchange} | {reached} |")
    return "\n".join(rows) + "\n"
