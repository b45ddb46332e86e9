"""Clicks in and clicks counted: the two sides of the Scenario 6 buffer."""

from prometheus_client import Counter

CLICKS_INGESTED = Counter(
    "clicks_ingested_total", "Clicks accepted (the broker confirmed them, or the outbox took them)."
)
CLICKS_KEPT_FOR_THE_BROKER = Counter(
    "clicks_outboxed_total", "Accepted clicks the broker could not confirm, committed to the outbox instead."
)
CLICKS_COUNTED = Counter("clicks_counted_total", "Clicks added to the counts (committed, each once).")
