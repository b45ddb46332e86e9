"""Observability, checked against the running fleet: a real Prometheus (Debian's) scrapes it with the
local scrape configuration, and every query of every dashboard panel must return data; and one
order's correlation id must lead through the logs of every service its saga touched."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from devtools import dashboards, monitoring
from devtools.rabbitmq_nodes import free_port
from tests.support.fleet import Fleet
from tests.support.infra import Infra
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

SCRAPE_INTERVAL = "1s"
# Grafana fills in $__rate_interval from the scrape interval; a minute holds enough 1 s samples.
RATE_WINDOW = "1m"


def panel_queries() -> Iterator[tuple[str, str, str]]:
    for build in dashboards.DASHBOARDS:
        dashboard = dashboards.to_grafana(build())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield dashboard["uid"], panel["title"], target["expr"]


def needs_docker(expr: str) -> bool:
    """cAdvisor's series exist only where Docker runs (compose); here such queries are only parsed."""
    return "container_" in expr


@pytest.fixture(scope="module")
async def prometheus(fleet: Fleet, infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed (apt-get install prometheus; .ci/run does it)")
    workdir = tmp_path_factory.mktemp("prometheus")
    broker_host = urlsplit(infra.management_url).hostname
    port = free_port()
    config = monitoring.scrape_config(
        "local",
        ports={name: fleet.ports[name] for name in fleet.ports if "#" not in name},
        rabbitmq=f"{broker_host}:{monitoring.RABBITMQ_PLUGIN_PORT}",
        scrape_interval=SCRAPE_INTERVAL,
        prometheus=f"127.0.0.1:{port}",
    )
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:

            async def all_targets_up() -> bool:
                # Until it is up, Prometheus refuses connections or answers "not ready" in plain text.
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    targets = (await client.get("/api/v1/targets")).json()["data"]["activeTargets"]
                    return bool(targets) and all(target["health"] == "up" for target in targets)
                return False

            await eventually(all_targets_up, timeout=60, message="Prometheus did not reach every target")
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
        log.close()


async def post(http: httpx.AsyncClient, fleet: Fleet, service: str, path: str, body: dict) -> dict:
    response = await http.post(f"{fleet.url(service)}{path}", json=body)
    assert response.status_code in (200, 201, 202), response.text
    return dict(response.json())


async def stocked_product(fleet: Fleet, http: httpx.AsyncClient) -> int:
    """A product of this test's own (the shared fleet's seeded ones belong to the scenario tests),
    created through the catalogue and known to inventory."""
    product = await post(
        http, fleet, "productservice", "/products", {"name": f"Obs {uuid.uuid4().hex[:8]}", "stock": 50}
    )

    async def known_to_inventory() -> bool:
        return (await http.get(f"{fleet.url('inventoryservice')}/inventory/{product['id']}")).status_code == 200

    await eventually(known_to_inventory, message="inventory never heard of the new product")
    return int(product["id"])


async def drive_all_six_scenarios(fleet: Fleet, http: httpx.AsyncClient) -> None:
    await asyncio.gather(
        *(
            post(http, fleet, "userservice", "/register", {"email": f"obs-{uuid.uuid4().hex[:10]}@example.com"})
            for _ in range(5)
        ),
        *(post(http, fleet, "paymentservice", "/process_payment", {"amount": 10, "currency": "EUR"}) for _ in range(5)),
        *(post(http, fleet, "analyticsservice", "/track_click", {"user_id": 1, "page": "/obs"}) for _ in range(20)),
    )
    product_id = await stocked_product(fleet, http)
    for revision in range(3):
        response = await http.put(
            f"{fleet.url('productservice')}/products/{product_id}", json={"name": f"Obs r{revision}"}
        )
        assert response.status_code == 200, response.text
    job = await post(http, fleet, "reportservice", "/generate_report", {"report_type": "daily"})
    orders = [
        await post(
            http,
            fleet,
            "orderservice",
            "/create_order",
            {"product_id": product_id, "quantity": 1, "payment_behaviour": behaviour},
        )
        for behaviour in ("succeed", "fail")
    ]

    async def all_finished() -> bool:
        report = (await http.get(f"{fleet.url('reportservice')}/jobs/{job['job_id']}")).json()
        states = [(await http.get(f"{fleet.url('orderservice')}/orders/{order['id']}")).json() for order in orders]
        return report["status"] == "completed" and all(state["status"] in ("completed", "failed") for state in states)

    await eventually(all_finished, timeout=30, message="the report or the saga did not finish")


async def test_every_dashboard_query_returns_data(fleet: Fleet, http: httpx.AsyncClient, prometheus: str) -> None:
    await drive_all_six_scenarios(fleet, http)
    await asyncio.sleep(4)  # a few more scrapes, so every rate() has two samples after the traffic

    empty: list[str] = []
    async with httpx.AsyncClient(base_url=prometheus, timeout=10.0) as client:
        for uid, title, expr in panel_queries():
            query = expr.replace("$__rate_interval", RATE_WINDOW)
            response = await client.get("/api/v1/query", params={"query": query})
            body = response.json()
            assert body["status"] == "success", f"{uid} / {title}: {query} -> {body}"
            if not needs_docker(expr) and not body["data"]["result"]:
                empty.append(f"{uid} / {title}: {query}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


async def test_one_correlation_id_leads_through_every_service_of_a_saga(fleet: Fleet, http: httpx.AsyncClient) -> None:
    correlation_id = f"saga-trace-{uuid.uuid4().hex[:12]}"
    product_id = await stocked_product(fleet, http)
    response = await http.post(
        f"{fleet.url('orderservice')}/create_order",
        json={"product_id": product_id, "quantity": 1, "payment_behaviour": "fail"},
        headers={"X-Correlation-ID": correlation_id},
    )
    assert response.status_code == 202
    assert response.headers["X-Correlation-ID"] == correlation_id
    order_id = response.json()["id"]

    async def failed() -> bool:
        return (await http.get(f"{fleet.url('orderservice')}/orders/{order_id}")).json()["status"] == "failed"

    await eventually(failed, timeout=20)

    def handled(service: str) -> set[str]:
        lines = [json.loads(line) for line in _json_lines(fleet.log_path(service))]
        return {line.get("event_type", "") for line in lines if line.get("correlation_id") == correlation_id}

    async def whole_saga_logged() -> bool:
        return (
            {"OrderCreated", "PaymentFailed"} <= handled("inventoryservice")
            and {"StockReserved"} <= handled("paymentservice")
            and {"StockReserved", "PaymentFailed", "StockReleased"} <= handled("orderservice")
        )

    await eventually(whole_saga_logged, timeout=10, message=f"{correlation_id} is missing from a service's log")


def _json_lines(path: Path) -> Iterator[str]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            yield line
