"""Search and cache show inventory's stock figure: they follow `StockLevelChanged` (the `stock_levels`
fanout) as the catalogue does, versioned, so a stale or repeated figure changes nothing."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from common.events import ProductUpdated, StockLevelChanged
from common.topology import CACHE_STOCK_LEVELS, SEARCH_STOCK_LEVELS
from tests.support.fleet import Fleet
from tests.support.impersonator import Impersonator
from tests.support.metrics import sample
from tests.support.saga import Saga
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


def token() -> str:
    """A word no other product name contains, so a search in a shared fleet finds one product."""
    return f"zs{secrets.token_hex(5)}"


async def search_hit(http: httpx.AsyncClient, fleet: Fleet, word: str, product_id: int) -> dict[str, Any] | None:
    response = await http.get(f"{fleet.url('searchservice')}/search", params={"q": word})
    assert response.status_code == 200, response.text
    return next((hit for hit in response.json()["results"] if hit["product_id"] == product_id), None)


async def cached(http: httpx.AsyncClient, fleet: Fleet, product_id: int) -> dict[str, Any] | None:
    response = await http.get(f"{fleet.url('cacheservice')}/cache/products/{product_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json())


async def shown_stock(http: httpx.AsyncClient, fleet: Fleet, word: str, product_id: int) -> dict[str, Any]:
    """The stock figure (and its inventory version) that search and cache show for the product."""
    hit, entry = await asyncio.gather(search_hit(http, fleet, word, product_id), cached(http, fleet, product_id))
    return {
        "search": None if hit is None else (hit["stock"], hit["stock_version"]),
        "cache": None if entry is None else (entry["stock"], entry["stock_version"]),
    }


async def stale_ignored(http: httpx.AsyncClient, fleet: Fleet) -> dict[str, float]:
    search, cache = await asyncio.gather(
        sample(http, fleet.url("searchservice"), "stale_events_ignored_total", queue=SEARCH_STOCK_LEVELS.name),
        sample(http, fleet.url("cacheservice"), "stale_events_ignored_total", queue=CACHE_STOCK_LEVELS.name),
    )
    return {"search": search, "cache": cache}


async def test_search_and_cache_show_inventorys_figure_after_an_order_and_ignore_older_ones(
    fleet: Fleet, http: httpx.AsyncClient, saga: Saga, publisher: Impersonator
) -> None:
    word = token()
    response = await http.post(f"{fleet.url('productservice')}/products", json={"name": f"Lamp {word}", "stock": 10})
    assert response.status_code == 201, response.text
    product_id = response.json()["id"]
    await eventually(
        lambda: _inventory_has(saga, product_id, available=10), message="the catalogue's stock did not reach inventory"
    )

    order = await saga.settled((await saga.create_order(product_id, 3, "succeed"))["id"])
    assert order["status"] == "completed", order
    figures = await eventually(
        lambda: _inventory_has(saga, product_id, available=7, sold=3), message="inventory did not record the sale"
    )
    expected = (7, figures["stock_version"])

    async def both_follow_inventory() -> dict[str, Any] | None:
        shown = await shown_stock(http, fleet, word, product_id)
        return shown if shown == {"search": expected, "cache": expected} else None

    await eventually(both_follow_inventory, timeout=30, message="search and cache did not show inventory's figure")
    # The catalogue change that created the product carried 10: the figure shown is inventory's, not that.
    entry = await cached(http, fleet, product_id)
    assert entry is not None
    assert entry["product_version"] == 1

    # Older figures, and one as old as the figure shown, published afterwards (late, redelivered, replayed).
    ignored_before = await stale_ignored(http, fleet)
    version = figures["stock_version"]
    for stale_version, available in ((version - 1, 99), (1, 42), (version, 55)):
        await publisher.publish(
            StockLevelChanged(
                product_id=product_id, available=available, reserved=0, sold=0, stock_version=stale_version
            )
        )

    async def all_ignored() -> bool:
        now = await stale_ignored(http, fleet)
        return all(now[service] - ignored_before[service] >= 3 for service in now)

    await eventually(all_ignored, timeout=30, message="search and cache did not see the stale figures")
    assert await shown_stock(http, fleet, word, product_id) == {"search": expected, "cache": expected}


async def test_a_figure_that_arrives_before_the_products_first_update_is_shown_once_it_does(
    fleet: Fleet, http: httpx.AsyncClient, publisher: Impersonator
) -> None:
    """The two fanouts are independent: inventory's figure can overtake the catalogue's update."""
    product_id = 600_000_000 + secrets.randbelow(100_000_000)  # not in the catalogue: only these events
    word = token()
    await publisher.publish(StockLevelChanged(product_id=product_id, available=4, reserved=1, sold=0, stock_version=5))
    await asyncio.sleep(1.0)  # time for it to be applied, with nothing yet to show it on
    assert await cached(http, fleet, product_id) is None

    await publisher.publish(
        ProductUpdated(
            product_id=product_id, name=f"Kettle {word}", stock=50, product_version=1, updated_at=datetime.now(UTC)
        )
    )

    async def shown() -> dict[str, Any] | None:
        figures = await shown_stock(http, fleet, word, product_id)
        return figures if figures == {"search": (4, 5), "cache": (4, 5)} else None

    await eventually(shown, timeout=30, message="inventory's earlier figure was not shown with the product")


async def _inventory_has(saga: Saga, product_id: int, *, available: int, sold: int = 0) -> dict[str, Any] | None:
    figures = await saga.stock(product_id)
    return figures if figures and (figures["available"], figures["sold"]) == (available, sold) else None
