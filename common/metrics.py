"""Prometheus metrics of the messaging core, shared by every service.

Buckets run from 1 ms to 10 s: fine enough to see a 5 ms P95 and wide enough for a 10 s report.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)

MESSAGES_PUBLISHED = Counter(
    "messages_published_total",
    "Messages handed to the broker, by outcome (confirmed, returned, nacked, unavailable).",
    ["exchange", "event_type", "outcome"],
)
MESSAGES_CONSUMED = Counter(
    "messages_consumed_total",
    "Deliveries taken off a queue, by outcome (acked, duplicate, retried, deferred, dead_lettered).",
    ["queue", "outcome"],
)
HANDLER_DURATION = Histogram(
    "message_handler_duration_seconds",
    "Time spent in a message handler, including its commit.",
    ["queue"],
    buckets=LATENCY_BUCKETS_S,
)
END_TO_END_LATENCY = Histogram(
    "message_end_to_end_latency_seconds",
    "From the publisher handing the message to the broker until its handler committed.",
    ["queue"],
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "message_batch_size",
    "Events applied per handler call by batching consumers (duplicates left out).",
    ["queue"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
STALE_EVENTS_IGNORED = Counter(
    "stale_events_ignored_total",
    "Events not applied because a newer version of the same entity was applied already.",
    ["queue"],
)
HANDLERS_IN_FLIGHT = Gauge("message_handlers_in_flight", "Handlers running now.", ["queue"])
OUTBOX_BACKLOG = Gauge("outbox_backlog_rows", "Outbox rows committed but not yet confirmed by the broker.")
OUTBOX_OLDEST_AGE = Gauge("outbox_oldest_row_age_seconds", "Age of the oldest unpublished outbox row.")
OUTBOX_RELAYED = Counter(
    "outbox_relayed_total", "Outbox rows published by the relay rather than right after their commit."
)
OUTBOX_PARKED = Gauge(
    "outbox_parked_rows",
    "Outbox rows that can never be published (unroutable, unknown exchange), kept with the reason.",
)
OUTBOX_ROWS_PARKED = Counter("outbox_rows_parked_total", "Outbox rows parked, by kind of problem.", ["kind"])
BACKGROUND_TASK_RESTARTS = Counter(
    "background_task_restarts_total",
    "Background tasks (outbox, batch flushers, ...) that died and were restarted.",
    ["task"],
)

# Shared by the saga's participants (inventory releases and reverses, payment refunds): one name.
SAGA_COMPENSATIONS = Counter("saga_compensations_total", "Compensating actions the saga ran, by action.", ["action"])

CONSUMER_OUTCOMES = (
    "acked",
    "duplicate",
    "retried",
    "deferred",
    "dead_lettered",
    "requeued",
    "redelivery_pending",
    "failed_after_commit",
)


def initialise_consumer_series(queue: str) -> None:
    """Create a queue's series at 0, so dashboards show "0 dead-lettered" rather than "no data"."""
    for outcome in CONSUMER_OUTCOMES:
        MESSAGES_CONSUMED.labels(queue=queue, outcome=outcome)
    STALE_EVENTS_IGNORED.labels(queue=queue)
    HANDLERS_IN_FLIGHT.labels(queue=queue)
