"""What inventory did, for the Scenario 5 dashboard row."""

from prometheus_client import Counter

from common.metrics import SAGA_COMPENSATIONS

RESERVATIONS = Counter(
    "stock_reservations_total",
    "Reservation requests by outcome (reserved, insufficient_stock, unknown_product).",
    ["outcome"],
)

# Series at 0 from the start: dashboards show 0 rather than "no data".
for _outcome in ("reserved", "insufficient_stock", "unknown_product"):
    RESERVATIONS.labels(outcome=_outcome)
for _action in ("release_reservation", "reverse_sale"):
    SAGA_COMPENSATIONS.labels(action=_action)
