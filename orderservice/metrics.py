"""How long sagas take, from the order's acceptance to its final status (the figure a benchmark wants)."""

from prometheus_client import Histogram

# Fine around the simulated payment delays (1 s for a saga charge, 2 s for Scenario 2 by default),
# where "delay + 300 ms" has to be read off.
SAGA_BUCKETS_S: tuple[float, ...] = (
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.1,
    1.2,
    1.3,
    1.5,
    2.0,
    2.1,
    2.2,
    2.3,
    2.5,
    3.0,
    5.0,
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
