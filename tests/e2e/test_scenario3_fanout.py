"""Scenario 3, fan-out: a product change reaches search, cache and analytics through one fanout exchange.

Also the stock contract with inventory: stock figures given to the catalogue go to inventory
(`StockLevelSet`), and the catalogue shows inventory's figures (`StockLevelChanged`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest

from common.events import ProductUpdated, StockLevelChanged
from tests.support.fleet import Fleet
from tests.support.impersonator import Impersonator
from tests.support.infra import Infra
from tests.support.metrics import sample
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e


def token() -> str:
    """A word no other product name contains, so searches in a shared fleet are exact."""
    return f"zq{secrets.token_hex(5)}"


async def create_product(http: httpx.AsyncClient, fleet: Fleet, **fields: Any) -> dict[str, Any]:
    response = await http.post(f"{fleet.url('productservice')}/products", json=fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def search_ids(http: httpx.AsyncClient, fleet: Fleet, query: str) -> list[int]:
    response = await http.get(f"{fleet.url('searchservice')}/search", params={"q": query})
    assert response.status_code == 200, response.text
    return [hit["product_id"] for hit in response.json()["results"]]


async def cached(http: httpx.AsyncClient, fleet: Fleet, product_id: int) -> dict[str, Any] | None:
    response = await http.get(f"{fleet.url('cacheservice')}/cache/products/{product_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json())


async def update_count(http: httpx.AsyncClient, fleet: Fleet, product_id: int) -> int:
    response = await http.get(f"{fleet.url('analyticsservice')}/analytics/product_updates/{product_id}")
    if response.status_code == 404:
        return 0
    assert response.status_code == 200, response.text
    return int(response.json()["updates"])


async def summary(http: httpx.AsyncClient, fleet: Fleet) -> dict[str, Any]:
    response = await http.get(f"{fleet.url('analyticsservice')}/analytics/summary")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
async def extra_consumer(infra: Infra) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A fourth consumer: a queue of the test's own, bound to the `product_updates` fanout."""
    connection = await aio_pika.connect_robust(infra.rabbitmq_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("product_updates")
    yield queue
    await connection.close()


async def received_updates(queue: aio_pika.abc.AbstractQueue, product_id: int) -> list[ProductUpdated]:
    """Drain what the extra consumer's queue holds; return the updates of `product_id` in it."""
    updates = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        event = ProductUpdated.model_validate_json(message.body)
        if event.product_id == product_id:
            updates.append(event)
    return updates


async def test_design_doc_example_fans_out_to_search_cache_and_analytics(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.put(f"{fleet.url('productservice')}/products/1", json={"name": "Updated Laptop", "stock": 75})
    assert response.status_code == 200, response.text
    assert response.json() == {"id": 1, "name": "Updated Laptop", "stock": 75, "event_published": True}

    product = (await http.get(f"{fleet.url('productservice')}/products/1")).json()
    assert product["name"] == "Updated Laptop"
    version = product["product_version"]
    assert version >= 2

    async def searchable() -> bool:
        return 1 in await search_ids(http, fleet, "updated laptop")

    await eventually(searchable, message="search did not reindex product 1")
    entry = await eventually(lambda: _cached_at_least(http, fleet, 1, version), message="cache not refreshed")
    assert entry["name"] == "Updated Laptop"
    # The cache shows inventory's figure: the 75 goes to inventory and comes back (StockLevelChanged).
    await eventually(lambda: _cached_stock_is(http, fleet, 1, 75), message="inventory's 75 not cached")
    await eventually(lambda: _counted_at_least(http, fleet, 1, 2), message="analytics did not count the update")
    assert (await summary(http, fleet))["product_updates_total"] >= 2


async def _cached_at_least(http: httpx.AsyncClient, fleet: Fleet, product_id: int, version: int) -> dict | None:
    entry = await cached(http, fleet, product_id)
    return entry if entry is not None and entry["product_version"] >= version else None


async def _cached_stock_is(http: httpx.AsyncClient, fleet: Fleet, product_id: int, stock: int) -> bool:
    entry = await cached(http, fleet, product_id)
    return entry is not None and entry["stock"] == stock


async def _counted_at_least(http: httpx.AsyncClient, fleet: Fleet, product_id: int, count: int) -> bool:
    return await update_count(http, fleet, product_id) >= count


async def test_a_renamed_product_is_found_by_its_new_name_only_and_counted(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    old, new = token(), token()
    product = await create_product(http, fleet, name=f"Keyboard {old}", stock=12, price="89.90")
    product_id = product["id"]
    await eventually(lambda: search_ids(http, fleet, old), message="the new product was not indexed")

    response = await http.put(
        f"{fleet.url('productservice')}/products/{product_id}", json={"name": f"Mechanical keyboard {new}"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": product_id,
        "name": f"Mechanical keyboard {new}",
        "stock": 12,
        "event_published": True,
    }

    assert await eventually(lambda: search_ids(http, fleet, new)) == [product_id]
    assert await search_ids(http, fleet, old) == [], "still found by its old name"
    entry = await eventually(lambda: _cached_at_least(http, fleet, product_id, 2))
    assert entry["name"] == f"Mechanical keyboard {new}"
    assert entry["price"] == "89.90"
    # Its creation and its update, each counted once.
    await eventually(lambda: _counted_at_least(http, fleet, product_id, 2))
    await stays(lambda: _count_is(http, fleet, product_id, 2), duration=1.0, message="an update was counted twice")


async def _count_is(http: httpx.AsyncClient, fleet: Fleet, product_id: int, expected: int) -> bool:
    return await update_count(http, fleet, product_id) == expected


async def test_seeded_products_and_creation_without_id_collisions(fleet: Fleet, http: httpx.AsyncClient) -> None:
    listed = (await http.get(f"{fleet.url('productservice')}/products")).json()
    seeded = {product["id"]: product for product in listed if product["id"] <= 3}
    assert set(seeded) == {1, 2, 3}
    assert seeded[2]["name"] == "Smartphone"
    assert all(product["price"] for product in seeded.values())

    created = await create_product(http, fleet, name=f"Tablet {token()}", stock=5)
    assert created["id"] > 3
    assert created["product_version"] == 1
    assert created["stock"] == 5
    assert created["price"] is None
    read = (await http.get(f"{fleet.url('productservice')}/products/{created['id']}")).json()
    assert read == created


async def test_unknown_products_are_not_found(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.put(f"{fleet.url('productservice')}/products/987654321", json={"name": "Ghost"})
    assert response.status_code == 404
    assert response.json() == {"detail": "product 987654321 not found"}
    assert (await http.get(f"{fleet.url('productservice')}/products/987654321")).status_code == 404
    missing = await http.get(f"{fleet.url('cacheservice')}/cache/products/987654321")
    assert missing.status_code == 404
    assert "not in the cache" in missing.json()["detail"]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"stock": -1},
        {"stock": "many"},
        {"stock": 1.5},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"stock": None},
        {"price": 0},
        {"price": "12.345"},
        {"name": "x" * 201},
        {"name": "Fine", "colour": "red"},
    ],
)
async def test_invalid_changes_are_refused(fleet: Fleet, http: httpx.AsyncClient, change: dict) -> None:
    response = await http.put(f"{fleet.url('productservice')}/products/2", json=change)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("product", [{}, {"stock": 3}, {"name": "No stock", "stock": -3}, {"name": "A", "id": 7}])
async def test_invalid_products_are_refused(fleet: Fleet, http: httpx.AsyncClient, product: dict) -> None:
    response = await http.post(f"{fleet.url('productservice')}/products", json=product)
    assert response.status_code == 422, response.text


async def test_search_refuses_an_empty_query(fleet: Fleet, http: httpx.AsyncClient) -> None:
    for params in ({}, {"q": ""}, {"q": "   "}, {"q": "x" * 101}):
        response = await http.get(f"{fleet.url('searchservice')}/search", params=params)
        assert response.status_code == 422, (params, response.text)


async def test_a_fourth_consumer_needs_no_change_to_the_publisher(
    fleet: Fleet, http: httpx.AsyncClient, extra_consumer: aio_pika.abc.AbstractQueue
) -> None:
    product = await create_product(http, fleet, name=f"Monitor {token()}", stock=8)
    response = await http.put(
        f"{fleet.url('productservice')}/products/{product['id']}", json={"stock": 6, "price": "199.00"}
    )
    assert response.status_code == 200

    collected: list[ProductUpdated] = []

    async def both_received() -> bool:
        collected.extend(await received_updates(extra_consumer, product["id"]))
        return len(collected) >= 2

    await eventually(both_received, message="the extra queue did not receive the updates")
    assert [(event.product_version, event.stock) for event in collected] == [(1, 8), (2, 6)]
    assert str(collected[1].price) == "199.00"
    assert collected[1].name == product["name"]


async def test_stale_and_repeated_updates_never_replace_a_newer_version(
    fleet: Fleet, http: httpx.AsyncClient, publisher: Impersonator
) -> None:
    """Out-of-order and duplicate deliveries, published straight into the fanout as a retry would."""
    product_id = 500_000_000 + secrets.randbelow(100_000_000)  # not in the catalogue: only these events
    names = {version: f"Version {version} {token()}" for version in (1, 2, 3)}

    def update(version: int, name: str | None = None) -> ProductUpdated:
        return ProductUpdated(
            product_id=product_id,
            name=name or names[version],
            stock=version,
            product_version=version,
            updated_at=datetime.now(UTC),
        )

    second = update(2)
    await publisher.publish(second)
    await eventually(lambda: search_ids(http, fleet, names[2]), message="version 2 was not indexed")
    await eventually(lambda: _cached_at_least(http, fleet, product_id, 2))

    ignored_before = await _stale_ignored(http, fleet)
    same_version_again = update(2, name=f"Version 2 again {token()}")
    await publisher.publish(update(1))  # older: arrives late
    await publisher.publish(same_version_again)  # a different event with a version already applied
    await publisher.publish(second)  # the very same event, delivered again

    async def both_ignored() -> bool:
        now = await _stale_ignored(http, fleet)
        return all(now[queue] - ignored_before[queue] >= 2 for queue in now)

    await eventually(both_ignored, message="search and cache did not see the stale updates")
    assert await search_ids(http, fleet, names[2]) == [product_id]
    assert await search_ids(http, fleet, names[1]) == []
    assert await search_ids(http, fleet, same_version_again.name) == []
    entry = await cached(http, fleet, product_id)
    assert entry is not None
    assert (entry["product_version"], entry["name"]) == (2, names[2])
    # Analytics counts distinct updates: the redelivered copy of the same event is not counted again.
    await eventually(lambda: _counted_at_least(http, fleet, product_id, 3))
    await stays(lambda: _count_is(http, fleet, product_id, 3), duration=1.0, message="a redelivery was counted")

    await publisher.publish(update(3))
    assert await eventually(lambda: search_ids(http, fleet, names[3])) == [product_id]
    assert (await eventually(lambda: _cached_at_least(http, fleet, product_id, 3)))["name"] == names[3]


async def _stale_ignored(http: httpx.AsyncClient, fleet: Fleet) -> dict[str, float]:
    search, cache = await asyncio.gather(
        sample(
            http,
            fleet.url("searchservice"),
            "stale_events_ignored_total",
            queue="search_product_updates_queue",
        ),
        sample(
            http,
            fleet.url("cacheservice"),
            "stale_events_ignored_total",
            queue="cache_product_updates_queue",
        ),
    )
    return {"search": search, "cache": cache}


# --- Stock: inventory owns it, the catalogue shows inventory's figure ------------------------------------


async def stock_sets_for(management: Management, product_id: int) -> list[dict[str, Any]]:
    """`StockLevelSet` events waiting for inventory, for one product (read without consuming them)."""
    messages = await management.peek("inventory_stock_set_queue", count=2000)
    events = [json.loads(message["payload"]) for message in messages]
    return [event for event in events if event["product_id"] == product_id]


async def test_stock_figures_given_to_the_catalogue_go_to_inventory_with_the_change(
    fleet: Fleet, http: httpx.AsyncClient, management: Management, publisher: Impersonator
) -> None:
    # Inventory away, so its queue keeps what the catalogue sent (it catches up when it is back).
    await fleet.stop("inventoryservice")
    try:
        product = await create_product(http, fleet, name=f"Camera {token()}", stock=40)
        product_id = product["id"]
        renamed = await http.put(f"{fleet.url('productservice')}/products/{product_id}", json={"name": "Camera X"})
        assert renamed.status_code == 200
        restocked = await http.put(f"{fleet.url('productservice')}/products/{product_id}", json={"stock": 30})
        assert restocked.json()["stock"] == 30

        async def two_sets() -> list[dict[str, Any]]:
            found = await stock_sets_for(management, product_id)
            return found if len(found) >= 2 else []

        sets = await eventually(two_sets, interval=0.5, message="the stock figures did not reach inventory's queue")
        assert [(event["available"], event["product_version"]) for event in sets] == [(40, 1), (30, 3)]

        # Inventory's own figure comes back: shown, and not sent anywhere again (that would loop).
        await publisher.publish(
            StockLevelChanged(product_id=product_id, available=27, reserved=3, sold=0, stock_version=1_000_000)
        )
        await eventually(lambda: _stock_is(http, fleet, product_id, 27), message="inventory's figure not shown")
        await asyncio.sleep(1.0)
        assert len(await stock_sets_for(management, product_id)) == 2
    finally:
        await fleet.start("inventoryservice")


async def _stock_is(http: httpx.AsyncClient, fleet: Fleet, product_id: int, stock: int) -> bool:
    product = (await http.get(f"{fleet.url('productservice')}/products/{product_id}")).json()
    return product["stock"] == stock


async def test_catalogue_shows_inventory_stock_and_ignores_older_figures(
    fleet: Fleet, http: httpx.AsyncClient, publisher: Impersonator, extra_consumer: aio_pika.abc.AbstractQueue
) -> None:
    product = await create_product(http, fleet, name=f"Speaker {token()}", stock=10)
    product_id = product["id"]
    newest = 2_000_000_000 + secrets.randbelow(1_000_000)

    await publisher.publish(
        StockLevelChanged(product_id=product_id, available=7, reserved=3, sold=0, stock_version=newest)
    )
    await eventually(lambda: _stock_is(http, fleet, product_id, 7), message="inventory's figure not shown")

    ignored_before = await _stock_stale_ignored(http, fleet)
    await publisher.publish(
        StockLevelChanged(product_id=product_id, available=99, reserved=0, sold=0, stock_version=newest - 1)
    )
    await eventually(lambda: _stock_stale_ignored_above(http, fleet, ignored_before), message="not ignored")
    shown = (await http.get(f"{fleet.url('productservice')}/products/{product_id}")).json()
    assert shown["stock"] == 7
    assert shown["product_version"] == 1, "a stock sync is not a catalogue change"

    # Only the creation went to the fanout: stock syncs are not announced again.
    await asyncio.sleep(0.5)
    assert [event.product_version for event in await received_updates(extra_consumer, product_id)] == [1]


async def _stock_stale_ignored(http: httpx.AsyncClient, fleet: Fleet) -> float:
    return await sample(
        http, fleet.url("productservice"), "stale_events_ignored_total", queue="product_stock_levels_queue"
    )


async def _stock_stale_ignored_above(http: httpx.AsyncClient, fleet: Fleet, before: float) -> bool:
    return await _stock_stale_ignored(http, fleet) > before


async def test_stock_for_an_unknown_product_is_dead_lettered_with_its_reason(
    fleet: Fleet, publisher: Impersonator, management: Management
) -> None:
    unknown = StockLevelChanged(
        product_id=900_000_000 + secrets.randbelow(1000), available=1, reserved=0, sold=0, stock_version=1
    )
    await publisher.publish(unknown)

    async def dead_lettered() -> list[dict[str, Any]]:
        messages = await management.peek("product_stock_levels_queue.dlq", count=500)
        return [m for m in messages if m["properties"]["message_id"] == str(unknown.event_id)]

    [dead] = await eventually(dead_lettered, interval=0.5)
    assert "not in the catalogue" in dead["properties"]["headers"]["x-dead-letter-reason"]
