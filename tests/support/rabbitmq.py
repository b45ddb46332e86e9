"""Looking at the broker the way a user does: through the management API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from devtools.provision import credentials_of
from tests.support.infra import Infra
from tests.support.waiting import eventually


class Management:
    def __init__(self, infra: Infra) -> None:
        self._vhost = quote(infra.vhost, safe="")
        self._client = httpx.AsyncClient(
            base_url=infra.management_url, auth=credentials_of(infra.rabbitmq_url), timeout=10.0
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def queue(self, name: str) -> dict[str, Any]:
        response = await self._client.get(f"/api/queues/{self._vhost}/{quote(name, safe='')}")
        response.raise_for_status()
        return dict(response.json())

    async def queues(self) -> list[dict[str, Any]]:
        response = await self._client.get(f"/api/queues/{self._vhost}")
        response.raise_for_status()
        return list(response.json())

    async def depth(self, name: str) -> int:
        """Ready plus unacknowledged messages (the management API refreshes every few seconds)."""
        return int((await self.queue(name)).get("messages", 0))

    async def peek(self, name: str, count: int = 100) -> list[dict[str, Any]]:
        """Read messages without consuming them (they are requeued)."""
        response = await self._client.post(
            f"/api/queues/{self._vhost}/{quote(name, safe='')}/get",
            json={"count": count, "ackmode": "reject_requeue_true", "encoding": "auto"},
        )
        response.raise_for_status()
        return list(response.json())

    async def take(self, name: str, count: int = 100) -> list[dict[str, Any]]:
        """Consume messages (they are removed from the queue)."""
        response = await self._client.post(
            f"/api/queues/{self._vhost}/{quote(name, safe='')}/get",
            json={"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
        response.raise_for_status()
        return list(response.json())

    async def publish(
        self, queue: str, payload: str, properties: dict[str, Any] | None = None, *, exchange: str = ""
    ) -> None:
        """Publish a message as a tool or another service would: to `exchange` (the default one routes
        by queue name) with routing key `queue`. Persistent JSON unless `properties` say otherwise."""
        target = quote(exchange or "amq.default", safe="")
        response = await self._client.post(
            f"/api/exchanges/{self._vhost}/{target}/publish",
            json={
                "properties": {"delivery_mode": 2, "content_type": "application/json", **(properties or {})},
                "routing_key": queue,
                "payload": payload,
                "payload_encoding": "string",
            },
        )
        response.raise_for_status()
        assert response.json().get("routed"), f"nothing took the message published to {queue!r}"

    async def republish(self, message: dict[str, Any], queue: str) -> None:
        """Put a message read with `take`/`peek` into `queue` again, byte for byte, with its properties."""
        properties = {key: value for key, value in message["properties"].items() if key != "headers"}
        headers = {
            key: value for key, value in message["properties"].get("headers", {}).items() if not key.startswith("x-")
        }
        await self.publish(queue, message["payload"], {**properties, "headers": headers})

    async def tap(self, exchange: str, name: str) -> None:
        """Bind a queue of the test's own to `exchange`, to see what is published there."""
        queue = quote(name, safe="")
        response = await self._client.put(
            f"/api/queues/{self._vhost}/{queue}", json={"durable": False, "auto_delete": False}
        )
        response.raise_for_status()
        response = await self._client.post(
            f"/api/bindings/{self._vhost}/e/{quote(exchange, safe='')}/q/{queue}", json={"routing_key": ""}
        )
        response.raise_for_status()

    async def delete_queue(self, name: str) -> None:
        response = await self._client.delete(f"/api/queues/{self._vhost}/{quote(name, safe='')}")
        if response.status_code != 404:
            response.raise_for_status()

    async def set_policy(self, name: str, pattern: str, definition: dict[str, Any], priority: int = 0) -> None:
        """Apply an operator's policy to this run's queues whose names match `pattern` (a regex)."""
        response = await self._client.put(
            f"/api/policies/{self._vhost}/{quote(name, safe='')}",
            json={"pattern": pattern, "definition": definition, "apply-to": "queues", "priority": priority},
        )
        response.raise_for_status()

    async def delete_policy(self, name: str) -> None:
        response = await self._client.delete(f"/api/policies/{self._vhost}/{quote(name, safe='')}")
        if response.status_code != 404:
            response.raise_for_status()

    async def connections_named(self, connection_name: str) -> list[dict[str, Any]]:
        response = await self._client.get(f"/api/vhosts/{self._vhost}/connections")
        response.raise_for_status()
        return [
            connection
            for connection in response.json()
            if connection.get("client_properties", {}).get("connection_name") == connection_name
        ]

    async def force_close(self, connection_name: str) -> int:
        """Close a client's connections from the broker side, as an operator or a network fault would."""
        connections = await eventually(
            lambda: self.connections_named(connection_name), message=f"no connection named {connection_name}"
        )
        for connection in connections:
            response = await self._client.delete(
                f"/api/connections/{quote(connection['name'], safe='')}",
                headers={"X-Reason": "forced close by the test suite"},
            )
            response.raise_for_status()
        return len(connections)

    async def limit_connections(self, maximum: int | None) -> None:
        """Cap the connections this run's vhost accepts (None lifts the cap). Existing connections stay;
        a client whose connection is closed cannot reconnect past the cap, as if the broker were away."""
        path = f"/api/vhost-limits/{self._vhost}/max-connections"
        if maximum is None:
            response = await self._client.delete(path)
            if response.status_code != 404:
                response.raise_for_status()
        else:
            (await self._client.put(path, json={"value": maximum})).raise_for_status()
