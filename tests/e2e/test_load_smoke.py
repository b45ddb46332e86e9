"""The k6 load test's smoke profile against the fleet: CI fails when any of its thresholds fails.

The script (k6-tests/script-async.js) runs all six scenarios in parallel for about 20 s; its
thresholds cover checks on every response, failed requests, each flow's accept latency (P95 under
the design document's limits), dropped arrivals and saga/job/payment completion by a deadline. A
threshold on an empty series passes vacuously, so this test also reads the summary and requires
samples in every flow's series.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.fleet import Fleet
from tests.support.k6 import FLEET_SCRIPT, run_k6, service_urls
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

FLOWS = ("register", "payment", "product_update", "report", "order", "click")
POLLED_FLOWS = ("order", "report", "payment")  # followed to their final status by polling


async def products_with_stock(http: httpx.AsyncClient, fleet: Fleet, count: int) -> list[int]:
    """Products of this test's own (the smoke load renames and restocks what it updates), with stock
    inventory knows of, so every order the load places can be reserved."""
    ids = []
    for index in range(count):
        response = await http.post(
            f"{fleet.url('productservice')}/products", json={"name": f"k6 smoke product {index}", "stock": 1000}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    async def stocked() -> bool:
        for product_id in ids:
            response = await http.get(f"{fleet.url('inventoryservice')}/inventory/{product_id}")
            if response.status_code != 200 or response.json()["available"] != 1000:
                return False
        return True

    await eventually(stocked, message="inventory did not take the new products' stock")
    return ids


async def test_the_smoke_load_passes_every_threshold_with_samples_in_every_series(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    product_ids = await products_with_stock(http, fleet, 3)
    run = await run_k6(
        FLEET_SCRIPT,
        {
            "PROFILE": "smoke",
            "PRODUCT_IDS": ",".join(map(str, product_ids)),
            "POLL_INTERVAL_S": "0.1",
            **service_urls(fleet),
        },
        fleet.log_dir / "k6-smoke",  # kept with the run's service logs in test-artifacts/
        timeout_s=180,
    )
    assert run.exit_code == 0, f"k6 exited with {run.exit_code}:\n{run.output}"
    summary = run.summary
    assert summary is not None, run.output
    assert summary["profile"] == "smoke"
    assert summary["thresholds_failed"] == [], run.output

    thresholds = {(threshold["metric"], threshold["expression"]) for threshold in summary["thresholds"]}
    metrics = summary["metrics"]
    rows = {row["flow"]: row for row in summary["accept_latency"]}
    assert set(rows) == set(FLOWS)
    for flow in FLOWS:
        latency = f"http_req_duration{{kind:accept,flow:{flow},expected_response:true}}"
        limit = 50 if flow == "click" else 100
        assert (latency, f"p(95)<{limit}") in thresholds, f"{flow} has no accept-latency threshold"
        assert metrics[latency]["values"]["count"] > 0, f"{flow}'s latency threshold measured an empty series"
        assert (f"checks{{flow:{flow}}}", "rate>0.999") in thresholds
        assert metrics[f"checks{{flow:{flow}}}"]["values"]["passes"] > 0, f"no check ran for {flow}"
        assert rows[flow]["accepted"] > 0
        assert rows[flow]["failed_requests"] == 0
        assert rows[flow]["checks_failed"] == 0
    for flow in POLLED_FLOWS:
        assert summary["completion_ms"][flow]["count"] > 0, f"no {flow} was followed to its final status"
    # Status polls are requests of their own, outside every accept series.
    assert metrics["http_reqs"]["values"]["count"] > sum(row["accepted"] for row in rows.values())
    assert summary["dropped_iterations"] == 0
    assert summary["deadline_misses"] == 0
    assert summary["checks"]["failed"] == 0
