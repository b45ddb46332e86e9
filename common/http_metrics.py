"""HTTP metrics of every service, by prometheus-fastapi-instrumentator: requests and their duration
by handler (the route's path template; `none` for a path no route matched), method and status, in
the fleet's latency buckets (1 ms to 10 s, fine enough to see a 5 ms P95). `/metrics` is not counted.

Measured on the benchmark machine, the instrumentator costs about 60 us of CPU per request (it
matches each request against the routes a second time); a hand-written middleware producing the
same series cost about 5 us. We keep the library the project's issues name: the series are what
dashboards and users of it expect, and the difference is a small share of any endpoint's cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as instrumentator_metrics
from prometheus_fastapi_instrumentator.metrics import Info

from common.metrics import LATENCY_BUCKETS_S


@functools.cache
def _request_instrumentations() -> tuple[Callable[[Info], None], ...]:
    """The request counter and histogram, made once per process as the registry holds them: asked a
    second time, the library finds the series registered and returns nothing, so a second app in the
    same process (the tests build several) would count nothing."""
    made = (instrumentator_metrics.requests(), instrumentator_metrics.latency(buckets=LATENCY_BUCKETS_S))
    return tuple(instrumentation for instrumentation in made if instrumentation is not None)


def instrument_http(app: FastAPI) -> None:
    """Count and time every request of `app`, and serve all metrics at `/metrics`."""
    Instrumentator(should_group_status_codes=False, excluded_handlers=["/metrics"]).add(
        *_request_instrumentations()
    ).instrument(app).expose(app, include_in_schema=False)
