"""Driving the order saga from tests: stock set the way the catalogue sets it, orders, and what each
participant shows (order and timeline, stock figures, reservation, payments)."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import httpx

from common.events import StockLevelSet
from common.topology import INVENTORY_STOCK_SET
from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

TERMINAL = ("completed", "failed")


def unique_product_id() -> int:
    """A product id no other test (and no catalogue seed) uses."""
    return 1_000_000 + secrets.randbelow(2_000_000_000)


def properties_of(event: Any) -> dict[str, Any]:
    return {"message_id": str(event.event_id), "correlation_id": event.correlation_id, "type": event.event_type}


async def consumed(http: httpx.AsyncClient, base_url: str, queue: str, outcome: str) -> float:
    """How many deliveries of `queue` the service behind `base_url` settled with `outcome` (its /metrics)."""
    text = (await http.get(f"{base_url}/metrics")).text
    pattern = re.compile(
        r"^messages_consumed_total\{(?=[^}]*queue=\""
        + re.escape(queue)
        + r"\")(?=[^}]*outcome=\""
        + re.escape(outcome)
        + r"\")[^}]*\} (\S+)$",
        re.MULTILINE,
    )
    return sum(float(value) for value in pattern.findall(text))


class Saga:
    def __init__(self, fleet: Fleet, http: httpx.AsyncClient, management: Management) -> None:
        self.fleet = fleet
        self.http = http
        self.management = management

    @property
    def orders_url(self) -> str:
        return self.fleet.url("orderservice")

    @property
    def inventory_url(self) -> str:
        return self.fleet.url("inventoryservice")

    @property
    def payments_url(self) -> str:
        return self.fleet.url("paymentservice")

    async def publish_stock_set(self, product_id: int, available: int, product_version: int) -> StockLevelSet:
        """Set a product's stock as the catalogue does: a StockLevelSet into inventory's queue."""
        event = StockLevelSet(product_id=product_id, available=available, product_version=product_version)
        await self.management.publish(INVENTORY_STOCK_SET.name, event.model_dump_json(), properties_of(event))
        return event

    async def set_stock(self, product_id: int, available: int, product_version: int = 1) -> dict[str, Any]:
        """Set the stock and wait until inventory shows it."""
        await self.publish_stock_set(product_id, available, product_version)

        async def applied() -> dict[str, Any] | None:
            figures = await self.stock(product_id)
            return figures if figures is not None and figures["available"] == available else None

        return await eventually(applied, message=f"inventory did not take stock {available} for {product_id}")

    async def stock(self, product_id: int) -> dict[str, Any] | None:
        response = await self.http.get(f"{self.inventory_url}/inventory/{product_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def reservation(self, order_id: int) -> dict[str, Any] | None:
        response = await self.http.get(f"{self.inventory_url}/reservations/{order_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def create_order(self, product_id: int, quantity: int, behaviour: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"product_id": product_id, "quantity": quantity}
        if behaviour is not None:
            payload["payment_behaviour"] = behaviour
        response = await self.http.post(f"{self.orders_url}/create_order", json=payload)
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def order(self, order_id: int) -> dict[str, Any]:
        response = await self.http.get(f"{self.orders_url}/orders/{order_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def orders_of_product(self, product_id: int) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.orders_url}/orders", params={"product_id": product_id, "limit": 500})
        assert response.status_code == 200, response.text
        return list(response.json())

    async def settled(self, order_id: int, timeout: float = 20.0, *, steps: int = 0) -> dict[str, Any]:
        """Wait until the order is completed or failed (and its timeline has at least `steps` steps)."""

        async def probe() -> dict[str, Any] | None:
            order = await self.order(order_id)
            return order if order["status"] in TERMINAL and len(order["timeline"]) >= steps else None

        return await eventually(probe, timeout=timeout, message=f"order {order_id} did not settle")

    async def payments_for(self, order_id: int) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.payments_url}/payments", params={"order_id": order_id})
        assert response.status_code == 200, response.text
        return list(response.json())

    async def consumed(self, service: str, queue: str, outcome: str) -> float:
        return await consumed(self.http, self.fleet.url(service), queue, outcome)


def steps_of(order: dict[str, Any]) -> list[str]:
    return [step["step"] for step in order["timeline"]]


def body_of(message: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(message["payload"]))
