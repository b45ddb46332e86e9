"""How long sagas take, from the order's acceptance to its final status (the figure a benchmark wants)."""

from prometheus_client import Histogram

SAGA_BUCKETS_S: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    1.5,
    2.0,
    2.1,
    2.25,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)

SAGA_DURATION = Histogram(
    "saga_duration_seconds",
    "From an order's acceptance until it completed or failed, by final status and failure reason.",
    ["status", "reason"],
    buckets=SAGA_BUCKETS_S,
)
