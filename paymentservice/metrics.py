"""What the payment service did, for the Scenario 2 and Scenario 5 dashboard rows."""

from prometheus_client import Counter

from common.metrics import SAGA_COMPENSATIONS

PAYMENTS_SETTLED = Counter(
    "payments_settled_total",
    "Payments the gateway answered (counted once recorded), by flow (standalone, saga) and status.",
    ["flow", "status"],
)

# Series at 0 from the start: dashboards show 0 rather than "no data".
for _flow in ("standalone", "saga"):
    for _status in ("completed", "failed"):
        PAYMENTS_SETTLED.labels(flow=_flow, status=_status)
SAGA_COMPENSATIONS.labels(action="refund_charge")
