"""make bench's arithmetic (histogram quantiles from bucket deltas, the ramp's verdict) and its report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.analysis import Histogram, RampStep, highest_held_rate, histograms, merge, ramp_rates, window
from bench.render import README_END, README_START, render_markdown, render_readme_section, update_readme

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
