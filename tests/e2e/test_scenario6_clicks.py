"""Scenario 6, buffered ingestion: clicks are accepted once the broker has them, and each is counted once."""

from __future__ import annotations

import asyncio
import secrets
import socket
import statistics
import time
from typing import Any

import httpx
import pytest

from common.events import Click, ClicksTracked
from tests.support.fleet import Fleet
from tests.support.impersonator import Impersonator
from tests.support.metrics import sample
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e

BURST = 2000
BURST_CONCURRENCY = 64


def page_name(tag: str = "page") -> str:
    return f"/{tag}/{secrets.token_hex(6)}"


async def clicks_on(http: httpx.AsyncClient, url: str, page: str) -> int:
    response = await http.get(f"{url}/analytics/clicks", params={"page": page})
    assert response.status_code == 200, response.text
    return int(response.json()["clicks"])


async def counts_equal(http: httpx.AsyncClient, url: str, expected: dict[str, int]) -> bool:
    counts = await asyncio.gather(*(clicks_on(http, url, page) for page in expected))
    return dict(zip(expected, counts, strict=True)) == expected


async def test_design_doc_example_is_tracked_then_counted(fleet: Fleet, http: httpx.AsyncClient) -> None:
    url = fleet.url("analyticsservice")
    page = page_name("homepage")
    response = await http.post(f"{url}/track_click", json={"user_id": 123, "page": page})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "tracked"}

    await eventually(lambda: counts_equal(http, url, {page: 1}), message="the click was not counted")
    summary = (await http.get(f"{url}/analytics/summary")).json()
    assert set(summary) >= {"clicks_total", "clicks_by_page", "product_updates_total"}
    assert summary["clicks_total"] >= 1
    assert all(isinstance(count, int) for count in summary["clicks_by_page"].values())


async def test_session_ids_are_optional_and_accepted(fleet: Fleet, http: httpx.AsyncClient) -> None:
    url = fleet.url("analyticsservice")
    page = page_name("session")
    response = await http.post(f"{url}/track_click", json={"user_id": 7, "page": page, "session_id": "s-1"})
    assert response.status_code == 200
    await eventually(lambda: counts_equal(http, url, {page: 1}))


@pytest.mark.parametrize(
    "click",
    [
        {},
        {"page": "home"},
        {"user_id": 1},
        {"user_id": "abc", "page": "home"},
        {"user_id": 0, "page": "home"},
        {"user_id": 1, "page": ""},
        {"user_id": 1, "page": "   "},
        {"user_id": 1, "page": "p" * 513},
        {"user_id": 1, "page": "home", "session_id": "s" * 129},
        {"user_id": 1, "page": "home", "referrer": "elsewhere"},
    ],
)
async def test_invalid_clicks_are_refused(fleet: Fleet, http: httpx.AsyncClient, click: dict[str, Any]) -> None:
    response = await http.post(f"{fleet.url('analyticsservice')}/track_click", json=click)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_a_body_that_is_not_json_is_refused(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.post(
        f"{fleet.url('analyticsservice')}/track_click",
        content=b"user_id=1&page=home",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


async def test_clicks_during_a_broker_outage_are_kept_in_the_outbox_and_counted_once_it_is_back(
    fleet: Fleet, http: httpx.AsyncClient, management: Management
) -> None:
    url = fleet.url("analyticsservice")
    page = page_name("outage")
    connection_name = f"analyticsservice@{socket.gethostname()}:{fleet.pid('analyticsservice')}"
    # The service loses its broker connection and cannot get a new one: a broker outage, for it alone.
    await management.limit_connections(0)
    try:
        await management.force_close(connection_name)

        async def broker_gone() -> bool:
            return (await http.get(f"{url}/ready")).status_code == 503

        await eventually(broker_gone, message="the service did not notice the broker was gone")
        answers = [
            (await http.post(f"{url}/track_click", json={"user_id": 1, "page": page})).status_code for _ in range(20)
        ]
        assert answers == [200] * 20, "clicks refused while the database could keep them"
        await stays(lambda: counts_equal(http, url, {page: 0}), duration=1.0, message="counted without a broker")
    finally:
        await management.limit_connections(None)

    # Back: the outbox publishes them, and each is counted once.
    await eventually(lambda: counts_equal(http, url, {page: 20}), timeout=30)
    await stays(lambda: counts_equal(http, url, {page: 20}), duration=1.0, message="a click counted twice")


async def test_redelivered_clicks_are_counted_once(
    fleet: Fleet, http: httpx.AsyncClient, publisher: Impersonator
) -> None:
    url = fleet.url("analyticsservice")
    pages = [page_name("dup") for _ in range(3)]
    # Ten messages of three clicks each, as the service publishes clicks accepted together.
    messages = [ClicksTracked(clicks=tuple(Click(user_id=index, page=page) for page in pages)) for index in range(10)]
    # Each message twice, as the broker redelivers after a lost acknowledgement.
    await asyncio.gather(*(publisher.publish(message) for message in messages + messages))

    expected = {page: 10 for page in pages}
    await eventually(lambda: counts_equal(http, url, expected), message="not every click was counted")
    await stays(lambda: counts_equal(http, url, expected), duration=1.0, message="a redelivery was counted again")


async def test_burst_on_two_replicas_counts_every_accepted_click_exactly_once(
    fleet: Fleet, http: httpx.AsyncClient, management: Management
) -> None:
    replica = fleet.add_replica("analyticsservice")
    await fleet.start(replica)
    try:
        urls = [fleet.url("analyticsservice"), fleet.url(replica)]
        pages = [page_name(f"burst{index}") for index in range(10)]
        semaphore = asyncio.Semaphore(BURST_CONCURRENCY)
        latencies: list[float] = []

        async def click(index: int) -> tuple[str, int]:
            page = pages[index % len(pages)]
            async with semaphore:
                started = time.perf_counter()
                response = await http.post(f"{urls[index % 2]}/track_click", json={"user_id": index + 1, "page": page})
                latencies.append(time.perf_counter() - started)
            return page, response.status_code

        started = time.perf_counter()
        results = await asyncio.gather(*(click(index) for index in range(BURST)))
        elapsed = time.perf_counter() - started
        print(
            f"\nburst: {BURST} clicks in {elapsed:.2f}s = {BURST / elapsed:.0f}/s through httpx, "
            f"P95 {statistics.quantiles(latencies, n=20)[18] * 1000:.1f} ms (client and fleet share 2 cores)"
        )

        statuses = [status for _, status in results]
        assert set(statuses) == {200}, f"refused clicks: {sorted(set(statuses))}"
        accepted = {page: sum(1 for p, status in results if p == page and status == 200) for page in pages}

        await eventually(
            lambda: counts_equal(http, urls[0], accepted), timeout=60, message="the burst was not fully counted"
        )
        await stays(lambda: counts_equal(http, urls[1], accepted), duration=1.5, message="a click was counted twice")
        assert await management.depth("click_tracked_queue.dlq") == 0

        # Both replicas took part in the counting (the queue hands batches to both).
        for url in urls:
            applied = await sample(http, url, "messages_consumed_total", queue="click_tracked_queue", outcome="acked")
            assert applied > 0, f"{url} counted no clicks"
    finally:
        await fleet.stop(replica)
