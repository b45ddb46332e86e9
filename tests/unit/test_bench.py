"""make bench's arithmetic (histogram quantiles from bucket deltas, the ramp's verdict) and its report."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.analysis import (
    Accept,
    Histogram,
    RampStep,
    highest_held_rate,
    histograms,
    merge,
    percentile,
    ramp_rates,
    start_burst,
    window,
)
from bench.ledger import build_ledger, cpu_used, k6_request_counts, messages, run_queue_wait_s
from bench.render import (
    README_END,
    README_START,
    accept_section,
    ledger_section,
    render_markdown,
    render_readme_section,
    update_readme,
)
from bench.run import accepts_of

ROOT = Path(__file__).resolve().parents[2]
INF = math.inf

METRICS_BEFORE = """\
# HELP message_end_to_end_latency_seconds Publish to handled.
# TYPE message_end_to_end_latency_seconds histogram
message_end_to_end_latency_seconds_bucket{le="0.01",queue="a_queue"} 10.0
message_end_to_end_latency_seconds_bucket{le="0.05",queue="a_queue"} 10.0
message_end_to_end_latency_seconds_bucket{le="+Inf",queue="a_queue"} 10.0
message_end_to_end_latency_seconds_count{queue="a_queue"} 10.0
message_end_to_end_latency_seconds_sum{queue="a_queue"} 0.05
"""
METRICS_AFTER = """\
# HELP message_end_to_end_latency_seconds Publish to handled.
# TYPE message_end_to_end_latency_seconds histogram
message_end_to_end_latency_seconds_bucket{le="0.01",queue="a_queue"} 60.0
message_end_to_end_latency_seconds_bucket{le="0.05",queue="a_queue"} 100.0
message_end_to_end_latency_seconds_bucket{le="+Inf",queue="a_queue"} 110.0
message_end_to_end_latency_seconds_count{queue="a_queue"} 110.0
message_end_to_end_latency_seconds_sum{queue="a_queue"} 3.0
message_end_to_end_latency_seconds_bucket{le="0.01",queue="b_queue"} 1.0
message_end_to_end_latency_seconds_bucket{le="0.05",queue="b_queue"} 1.0
message_end_to_end_latency_seconds_bucket{le="+Inf",queue="b_queue"} 1.0
message_end_to_end_latency_seconds_count{queue="b_queue"} 1.0
message_end_to_end_latency_seconds_sum{queue="b_queue"} 0.001
# HELP other_seconds Something else.
# TYPE other_seconds histogram
other_seconds_bucket{le="+Inf"} 5.0
other_seconds_count 5.0
other_seconds_sum 1.0
"""


def test_quantiles_interpolate_within_the_bucket_the_rank_falls_in() -> None:
    histogram = Histogram(((0.01, 50.0), (0.05, 90.0), (0.1, 100.0), (INF, 100.0)))
    assert histogram.quantile(0.5) == pytest.approx(0.01)
    assert histogram.quantile(0.25) == pytest.approx(0.005)
    assert histogram.quantile(0.95) == pytest.approx(0.075)
    assert not histogram.beyond_range(0.99)
    assert Histogram(((0.01, 0.0), (INF, 0.0))).quantile(0.5) is None


def test_a_quantile_beyond_the_highest_bucket_is_its_bound_and_says_so() -> None:
    histogram = Histogram(((1.0, 90.0), (10.0, 94.0), (INF, 100.0)))
    assert histogram.quantile(0.95) == 10.0
    assert histogram.beyond_range(0.95)
    assert not histogram.beyond_range(0.9)


def test_the_window_between_two_scrapes_counts_only_what_happened_in_it() -> None:
    before = histograms(METRICS_BEFORE, "message_end_to_end_latency_seconds")
    after = histograms(METRICS_AFTER, "message_end_to_end_latency_seconds")
    observed = window(before, after)
    a_queue = observed[(("queue", "a_queue"),)]
    assert a_queue.buckets == ((0.01, 50.0), (0.05, 90.0), (INF, 100.0))
    assert a_queue.count == 100
    assert a_queue.quantile(0.5) == pytest.approx(0.01)
    assert a_queue.beyond_range(0.95)
    # A series that appeared meanwhile counts from zero.
    assert observed[(("queue", "b_queue"),)].count == 1
    assert merge(observed.values()).count == 101
    assert histograms(METRICS_AFTER, "other_seconds")[()].count == 5


def step(rate: float, p95: float | None = 10.0, **overrides: int) -> RampStep:
    figures = {"requests": int(rate * 10), "failed_requests": 0, "failed_checks": 0, "dropped_iterations": 0}
    figures.update(overrides)
    return RampStep(target_rate=rate, achieved_rate=rate, p50_ms=1.0, p95_ms=p95, p99_ms=p95, **figures)


def test_a_rate_is_held_only_with_every_arrival_answered_in_time() -> None:
    assert step(500).held(50)
    assert not step(500, p95=50.0).held(50)
    assert not step(500, p95=None).held(50)
    assert not step(500, failed_requests=1).held(50)
    assert not step(500, failed_checks=1).held(50)
    assert not step(500, dropped_iterations=1).held(50)
    assert not step(500, requests=0).held(50)
    assert highest_held_rate([step(250), step(325), step(420, p95=80.0), step(370)], 50) == 370
    assert highest_held_rate([step(250, p95=80.0)], 50) == 0


def test_ramp_rates_grow_geometrically_to_the_maximum() -> None:
    assert ramp_rates(250, 2, 2000) == [250, 500, 1000, 2000]
    assert ramp_rates(250, 1.3, 500) == [250, 325, 422]
    with pytest.raises(ValueError, match="grows"):
        ramp_rates(250, 1.0, 500)


def test_the_readme_block_is_replaced_and_nothing_else() -> None:
    readme = f"intro\n{README_START}\nold figures\n{README_END}\noutro\n"
    assert update_readme(readme, "new figures") == f"intro\n{README_START}\nnew figures\n{README_END}\noutro\n"
    with pytest.raises(ValueError, match=r"no .* block"):
        update_readme("no block here", "new figures")


def test_readme_shows_the_committed_benchmark() -> None:
    """README.md's block is what `make bench` rendered from docs/bench/results.json."""
    results = json.loads((ROOT / "docs" / "bench" / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    section = render_readme_section(results, "docs/bench/latency.png")
    assert f"{README_START}\n{section}\n{README_END}" in readme
    assert (ROOT / "docs" / "bench" / "results.md").read_text() == render_markdown(results)
    assert (ROOT / "docs" / "bench" / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert results["machine"]["cores"]
    assert results["date"] in section


METRICS_PUBLISHED = """\
# TYPE messages_published_total counter
messages_published_total{exchange="(default)",event_type="ClicksTracked",outcome="confirmed"} {clicks}
messages_published_total{exchange="(default)",event_type="ClicksTracked",outcome="unavailable"} 7.0
messages_published_total{exchange="product_updates",event_type="ProductUpdated",outcome="confirmed"} {updates}
# TYPE messages_consumed_total counter
messages_consumed_total{queue="click_tracked_queue",outcome="acked"} {clicks}
messages_consumed_total{queue="search_product_updates_queue",outcome="acked"} {updates}
messages_consumed_total{queue="search_product_updates_queue",outcome="duplicate"} 1.0
"""


def published(clicks: int, updates: int) -> str:
    return METRICS_PUBLISHED.replace("{clicks}", f"{clicks}.0").replace("{updates}", f"{updates}.0")


def test_the_ledger_counts_confirmed_publishes_and_every_delivery_between_two_scrapes() -> None:
    before = {"analyticsservice": published(10, 2)}
    after = {"analyticsservice": published(110, 5), "searchservice": published(0, 3)}
    counted = messages(before, after)
    # Unconfirmed publishes are not messages the broker took; a duplicate delivery is still a delivery.
    assert counted == {"published_clicks": 100, "published_other": 6, "delivered_clicks": 100, "delivered_other": 7}


def test_cpu_used_counts_new_processes_in_full_and_ignores_clock_noise() -> None:
    before = {"postgresql": {1: 2.0, 2: 1.0}, "rabbitmq": {9: 5.0}}
    after = {"postgresql": {1: 2.5, 3: 0.25}, "rabbitmq": {9: 5.0}}  # backend 2 exited, 3 started
    assert cpu_used(before, after) == {"postgresql": 0.75, "rabbitmq": 0.0}


def test_fleet_cpu_per_request_leaves_out_the_workers_and_the_load_generator() -> None:
    cpu = {"userservice": 1.0, "analyticsservice": 3.0, "rabbitmq": 2.0, "postgresql": 1.0}
    cpu |= {"report workers": 40.0, "k6": 9.0, "bare endpoint": 0.36}
    ledger = build_ledger(
        cpu_s=cpu,
        services=["userservice", "analyticsservice"],
        requests={"total": 2000.0, "accepted": 1500.0, "accepted_clicks": 1000.0},
        message_counts={
            "published_clicks": 1000,
            "published_other": 1000,
            "delivered_clicks": 1000,
            "delivered_other": 2000,
        },
        transactions={"committed": 750.0, "rolled_back": 100.0},
        bare_requests=1200.0,
        window_s=40.0,
    )
    assert ledger["fleet_cpu_s"] == 7.0
    assert ledger["fleet_cpu_ms_per_request"] == 3.5
    assert ledger["bare_cpu_ms_per_request"] == 0.3
    assert ledger["multiple_of_bare"] == pytest.approx(11.7)
    assert ledger["per_accepted_request"] == {"published": 1.33, "delivered": 2.0, "committed": 0.5}
    assert ledger["per_accepted_non_click_request"] == {"published": 2.0, "delivered": 4.0}


def test_k6_request_counts_take_polls_into_the_total() -> None:
    summary = {
        "metrics": {"http_reqs": {"values": {"count": 120}}},
        "accept_latency": [{"flow": "click", "accepted": 80}, {"flow": "order", "accepted": 10}],
    }
    assert k6_request_counts(summary) == {"total": 120.0, "accepted": 90.0, "accepted_clicks": 80.0}


def test_run_queue_wait_grows_for_processes_that_share_one_core() -> None:
    """Two processes spinning on the same core: each waits for it about as long as it runs."""
    spin = "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass"
    core = min(os.sched_getaffinity(0))
    hogs = [
        subprocess.Popen([sys.executable, "-c", spin], preexec_fn=lambda: os.sched_setaffinity(0, {core}))
        for _ in range(2)
    ]
    try:
        time.sleep(0.4)
        waits = [run_queue_wait_s(hog.pid) for hog in hogs]
    finally:
        for hog in hogs:
            hog.wait(timeout=10)
    assert all(wait is not None and wait > 0.05 for wait in waits), waits
    assert run_queue_wait_s(hogs[0].pid) is None  # gone and reaped


def test_the_ledger_table_shows_the_wait_for_a_cpu_and_older_results_without_it() -> None:
    results = json.loads((ROOT / "docs" / "bench" / "results.json").read_text())
    without = "\n".join(ledger_section(results, "###"))
    assert "| userservice |" in without
    results["ledger"]["cpu_wait_s"] = {key: 1.25 for key in results["ledger"]["cpu_s"]}
    table = "\n".join(ledger_section(results, "###"))
    assert "| userservice | " in table
    assert next(line for line in table.splitlines() if line.startswith("| userservice |")).endswith("| 1.25 |")
    assert "| **fleet** |" in table
    assert "**15.00**" in table  # twelve rows of the fleet at 1.25 s


def test_percentile_interpolates_between_ranks_as_k6_does() -> None:
    assert percentile([], 0.95) is None
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([float(value) for value in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_the_start_burst_counts_the_first_seconds_accepts_apart_per_flow() -> None:
    accepts = [
        Accept(0.0, "order", 140.0),
        Accept(0.2, "order", 9.0),
        Accept(0.3, "click", 60.0),
        *(Accept(1.0 + index, "order", 5.0) for index in range(10)),
        Accept(25.0, "order", 30.0),
    ]
    burst = start_burst(accepts, first_s=1.0, slow_ms=15.0)
    assert burst["order"] == {"at_start": 2, "at_start_slow": 1, "p95_ms_later": pytest.approx(17.5)}
    assert burst["click"] == {"at_start": 1, "at_start_slow": 1, "p95_ms_later": None}


def test_accepts_are_read_from_k6_csv_samples_by_when_they_were_sent(tmp_path: Path) -> None:
    header = "metric_name,timestamp,metric_value,extra_tags\n"
    rows = [
        "http_req_duration,1000100,100.0,kind=accept&flow=order",  # sent at 1000000, the first
        "http_req_duration,1000510,10.0,kind=accept&flow=click",
        "http_req_duration,1000600,50.0,kind=poll&flow=order",  # a status poll: not an accept
        "http_reqs,1000700,1.0,kind=accept&flow=click",  # not a duration
    ]
    samples = tmp_path / "samples.csv.gz"
    with gzip.open(samples, "wt") as out:
        out.write(header + "\n".join(rows) + "\n")
    assert accepts_of(samples) == [Accept(0.0, "order", 100.0), Accept(0.5, "click", 10.0)]


def test_the_accept_table_shows_the_p95_after_the_start_burst_and_older_results_without_it() -> None:
    results = json.loads((ROOT / "docs" / "bench" / "results.json").read_text())
    results["default_profile"].pop("start_burst", None)
    assert "P95 after 1 s" not in "\n".join(accept_section(results, "###"))
    flows = [row["flow"] for row in results["default_profile"]["accept_latency"]]
    results["default_profile"]["start_burst"] = {
        flow: {"at_start": 4, "at_start_slow": 2, "p95_ms_later": 12.5} for flow in flows
    }
    table = "\n".join(accept_section(results, "###"))
    assert "| P95 after 1 s |" in table
    assert f"{4 * len(flows)} accepts went out in the run's first second, {2 * len(flows)} of them" in table
    register = next(line for line in table.splitlines() if line.startswith("| 1 register |"))
    assert "| 12.5 |" in register
