"""Pure figures for `make bench`: histogram quantiles from Prometheus bucket deltas, the ramp's verdict."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # a series' labels without `le`, sorted


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts of one histogram series: (upper bound, observations <= bound), +Inf last."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def minus(self, earlier: Histogram | None) -> Histogram:
        """The observations made since `earlier` (a scrape of the same series before)."""
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return Histogram(tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets))

    def quantile(self, q: float) -> float | None:
        """Like PromQL's histogram_quantile: linear within the bucket the rank falls in; a rank in the
        +Inf bucket gives the highest finite bound (a lower limit: see `beyond_range`). None without
        observations."""
        if not 0 <= q <= 1:
            raise ValueError("a quantile lies between 0 and 1")
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank and count > lower_count:
                if math.isinf(bound):
                    return lower_bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
            lower_bound, lower_count = bound, count
        return lower_bound

    def beyond_range(self, q: float) -> bool:
        """Whether the q-quantile lies above the highest finite bucket (so `quantile` is a lower limit)."""
        finite = [count for bound, count in self.buckets if not math.isinf(bound)]
        return self.count > 0 and bool(finite) and finite[-1] < q * self.count


def histograms(metrics_text: str, name: str) -> dict[Labels, Histogram]:
    """Every series of histogram `name` in a /metrics page, by its labels (without `le`)."""
    series: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            labels = tuple(sorted((key, value) for key, value in sample.labels.items() if key != "le"))
            series[labels].append((float(sample.labels["le"]), float(sample.value)))
    return {labels: Histogram(tuple(sorted(buckets))) for labels, buckets in series.items()}


def merge(histograms_: Iterable[Histogram]) -> Histogram:
    """Several series with the same buckets as one (e.g. a saga histogram over every status)."""
    totals: dict[float, float] = defaultdict(float)
    for histogram in histograms_:
        for bound, count in histogram.buckets:
            totals[bound] += count
    return Histogram(tuple(sorted(totals.items())))


def window(before: Mapping[Labels, Histogram], after: Mapping[Labels, Histogram]) -> dict[Labels, Histogram]:
    """The observations between two scrapes, per series (series that appeared count from zero)."""
    return {labels: histogram.minus(before.get(labels)) for labels, histogram in after.items()}


def label(labels: Labels, key: str) -> str:
    return dict(labels).get(key, "")


@dataclass(frozen=True)
class RampStep:
    """One constant-arrival-rate step of the click ramp, as k6-tests/ramp.js summarised it."""

    target_rate: float
    achieved_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests: int
    failed_requests: int
    failed_checks: int
    dropped_iterations: int

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> RampStep:
        return cls(
            target_rate=float(summary["target_rate"]),
            achieved_rate=float(summary["achieved_rate"]),
            p50_ms=summary["p50_ms"],
            p95_ms=summary["p95_ms"],
            p99_ms=summary["p99_ms"],
            requests=int(summary["requests"]),
            failed_requests=int(summary["failed_requests"]),
            failed_checks=int(summary["failed_checks"]),
            dropped_iterations=int(summary["dropped_iterations"]),
        )

    def held(self, p95_limit_ms: float) -> bool:
        """The rate was held: every arrival sent, every answer a success, P95 under the limit."""
        return (
            self.requests > 0
            and self.p95_ms is not None
            and self.p95_ms < p95_limit_ms
            and self.failed_requests == 0
            and self.failed_checks == 0
            and self.dropped_iterations == 0
        )


def highest_held_rate(steps: Sequence[RampStep], p95_limit_ms: float) -> float:
    """The highest target rate among the steps held (0 if none was)."""
    return max((step.target_rate for step in steps if step.held(p95_limit_ms)), default=0.0)


def ramp_rates(start: float, factor: float, maximum: float) -> list[int]:
    """Geometric steps from `start` up to `maximum`."""
    if start <= 0 or factor <= 1 or maximum < start:
        raise ValueError("a ramp starts above zero and grows")
    rates = []
    rate = start
    while rate <= maximum:
        rates.append(round(rate))
        rate *= factor
    return rates


@dataclass(frozen=True)
class Accept:
    """One accept request of a k6 run: when it was sent (seconds after the run's first request), its
    flow and its duration."""

    sent_s: float
    flow: str
    ms: float


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear between the closest ranks, as k6 computes its p(N). None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def start_burst(accepts: Sequence[Accept], first_s: float, slow_ms: float) -> dict[str, dict[str, Any]]:
    """Per flow: the accepts sent in the run's first `first_s` seconds, when every virtual user sends its
    first request at once, how many of them took over `slow_ms`, and the P95 of the others."""
    flows: dict[str, list[Accept]] = defaultdict(list)
    for accept in accepts:
        flows[accept.flow].append(accept)
    figures = {}
    for flow, of_flow in flows.items():
        at_start = [accept.ms for accept in of_flow if accept.sent_s < first_s]
        later = [accept.ms for accept in of_flow if accept.sent_s >= first_s]
        p95 = percentile(later, 0.95)
        figures[flow] = {
            "at_start": len(at_start),
            "at_start_slow": sum(1 for duration in at_start if duration > slow_ms),
            "p95_ms_later": None if p95 is None else round(p95, 2),
        }
    return figures
