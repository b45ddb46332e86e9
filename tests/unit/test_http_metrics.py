"""HTTP metrics label requests by route template, method and status, as the dashboards expect:
`handler` is the route's path template, `none` for a path no route matched, `/metrics` itself is
not counted, and durations use the fleet's latency buckets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from common.http_metrics import instrument_http
from common.metrics import LATENCY_BUCKETS_S

# The metrics live in the process-wide registry: every test uses handlers of its own.
router = APIRouter(prefix="/shop")


@router.get("/orders/{order_id}")
async def get_order(order_id: int) -> dict[str, int]:
    return {"id": order_id}


@router.post("/orders", status_code=202)
async def create_order() -> dict[str, str]:
    return {"status": "pending"}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("the handler failed")


def make_app() -> FastAPI:
    app = FastAPI()
    app.include_router(router)

    instrument_http(app)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        yield http


async def samples(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await client.get("/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_of(found: dict, handler: str, method: str, status: str) -> float:
    return found.get(("http_requests_total", (("handler", handler), ("method", method), ("status", status))), 0.0)


async def test_requests_are_counted_by_route_template_method_and_status(client: httpx.AsyncClient) -> None:
    before = await samples(client)
    for order_id in (1, 2, 3):
        assert (await client.get(f"/shop/orders/{order_id}")).status_code == 200
    assert (await client.get("/shop/orders/not-a-number")).status_code == 422
    assert (await client.post("/shop/orders")).status_code == 202
    assert (await client.put("/shop/orders/1")).status_code == 405
    assert (await client.get("/shop/nowhere/7")).status_code == 404
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/shop/boom")).status_code == 500
    after = await samples(client)

    def delta(handler: str, method: str, status: str) -> float:
        return requests_of(after, handler, method, status) - requests_of(before, handler, method, status)

    assert delta("/shop/orders/{order_id}", "GET", "200") == 3
    assert delta("/shop/orders/{order_id}", "GET", "422") == 1
    assert delta("/shop/orders", "POST", "202") == 1
    assert delta("/shop/orders/{order_id}", "PUT", "405") == 1
    assert delta("none", "GET", "404") == 1, "an unmatched path is one series, not one per path"
    assert delta("/openapi.json", "GET", "200") == 1
    assert delta("/shop/boom", "GET", "500") == 1, "a handler that raises is counted as a 500"
    assert not any(dict(labels).get("handler") == "/metrics" for _, labels in after), "/metrics counts itself"


async def test_durations_use_the_fleet_latency_buckets(client: httpx.AsyncClient) -> None:
    await client.post("/shop/orders")
    found = await samples(client)
    bounds = sorted(
        float(dict(labels)["le"])
        for name, labels in found
        if name == "http_request_duration_seconds_bucket" and dict(labels)["handler"] == "/shop/orders"
    )
    assert bounds == [*LATENCY_BUCKETS_S, float("inf")]
    count_key = (
        "http_request_duration_seconds_count",
        (("handler", "/shop/orders"), ("method", "POST"), ("status", "202")),
    )
    assert found[count_key] >= 1


async def test_every_app_built_in_one_process_counts_its_requests() -> None:
    """The series are process-wide: an app built after another (the tests build several) counts too."""
    first, second = make_app(), make_app()
    transports = [httpx.ASGITransport(app=app, raise_app_exceptions=False) for app in (first, second)]
    async with (
        httpx.AsyncClient(transport=transports[0], base_url="http://service") as first_client,
        httpx.AsyncClient(transport=transports[1], base_url="http://service") as second_client,
    ):
        before = requests_of(await samples(second_client), "/shop/orders", "POST", "202")
        assert (await first_client.post("/shop/orders")).status_code == 202
        assert (await second_client.post("/shop/orders")).status_code == 202
        after = requests_of(await samples(second_client), "/shop/orders", "POST", "202")
    assert after - before == 2
