"""Grafana dashboards, generated so that every panel's query is code the test suite can run.

`make monitoring` writes grafana/dashboards/*.json; Grafana provisions them (compose mounts the
folder). tests/unit/test_monitoring.py checks their structure and that the files are current;
tests/e2e/test_observability.py runs every query against a real Prometheus scraping the fleet.

Three dashboards:
- Fleet overview: requests, accept latency P50/P95/P99 per scenario endpoint, errors, CPU and memory
  (cAdvisor in compose, each process's own metrics everywhere);
- Messaging: queue depth, broker rates, redeliveries, dead letters, consumers, end-to-end latency,
  handler outcomes and the outbox;
- Scenarios: one row per scenario with its own signals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"

# The endpoint a user waits on in each scenario (handler label as the instrumentator reports it).
ACCEPT_ENDPOINTS = {
    "S1 register": ("userservice", "POST", "/register"),
    "S2 process_payment": ("paymentservice", "POST", "/process_payment"),
    "S3 update product": ("productservice", "PUT", "/products/{product_id}"),
    "S4 generate_report": ("reportservice", "POST", "/generate_report"),
    "S5 create_order": ("orderservice", "POST", "/create_order"),
    "S6 track_click": ("analyticsservice", "POST", "/track_click"),
}
ACCEPT_HANDLERS = "|".join(handler for _, _, handler in ACCEPT_ENDPOINTS.values())
# Retry tiers are `retry.<delay>ms`; dead-letter queues end in `.dlq`.
MAIN_QUEUES = 'queue!~"retry[.].*|.*[.]dlq"'


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8
    stacked: bool = False


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[Row]
    tags: list[str] = field(default_factory=lambda: ["event-fleet"])


def _quantiles(metric: str, by: str, selector: str = "", quantiles: tuple[float, ...] = (0.5, 0.95)) -> list[Query]:
    inner = f"sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}]))"
    return [Query(f"histogram_quantile({q}, {inner})", f"P{round(q * 100)} {{{{{by}}}}}") for q in quantiles]


def _or_zero(numerator: str, denominator: str) -> str:
    """A ratio that reads 0 (not "no data") while the numerator has no series yet."""
    return f"({numerator} or ({denominator}) * 0) / ({denominator})"


def fleet_overview() -> Dashboard:
    def accept_quantile(q: float) -> Panel:
        return Panel(
            f"Accept latency P{round(q * 100)} by scenario endpoint",
            [
                Query(
                    f"histogram_quantile({q}, sum by (le, handler) (rate(http_request_duration_seconds_bucket"
                    f'{{handler=~"{ACCEPT_HANDLERS}", method=~"POST|PUT"}}[{RATE}])))',
                    "{{handler}}",
                )
            ],
            unit="s",
            width=8,
            description="The request a user waits on in each scenario. Targets: P95 <= 15 ms, P99 <= 50 ms.",
        )

    requests = 'sum by (job) (rate(http_requests_total{handler!~"/metrics|/health|/ready"}[' + RATE + "]))"
    errors_5xx = f'sum by (job) (rate(http_requests_total{{status=~"5.."}}[{RATE}]))'
    errors_4xx = f'sum by (job) (rate(http_requests_total{{status=~"4.."}}[{RATE}]))'
    all_requests = f"sum by (job) (rate(http_requests_total[{RATE}]))"
    return Dashboard(
        "fleet-overview",
        "Event Fleet - overview",
        "Requests, accept latency per scenario, errors, CPU and memory of the ten services.",
        [
            Row(
                "Traffic and latency",
                [
                    Panel("Requests per second by service", [Query(requests, "{{job}}")], unit="reqps", stacked=True),
                    Panel(
                        "Accepted requests per second by scenario endpoint",
                        [
                            Query(
                                "sum by (handler) (rate(http_requests_total"
                                f'{{handler=~"{ACCEPT_HANDLERS}", status=~"2.."}}[{RATE}]))',
                                "{{handler}}",
                            )
                        ],
                        unit="reqps",
                    ),
                    accept_quantile(0.5),
                    accept_quantile(0.95),
                    accept_quantile(0.99),
                ],
            ),
            Row(
                "Errors",
                [
                    Panel(
                        "Server errors (5xx) ratio by service",
                        [Query(_or_zero(errors_5xx, all_requests), "{{job}}")],
                        unit="percentunit",
                        description="503 means a dependency (broker, database) was down and nothing was accepted.",
                    ),
                    Panel(
                        "Refused requests (4xx) ratio by service",
                        [Query(_or_zero(errors_4xx, all_requests), "{{job}}")],
                        unit="percentunit",
                        description="Bad input (422), unknown ids (404), duplicates (409).",
                    ),
                    Panel(
                        "Services up",
                        [Query('sum(up{job=~".*service"})', "services up"), Query('up{job=~"rabbitmq.*"}', "{{job}}")],
                        kind="stat",
                        width=24,
                        height=4,
                    ),
                ],
            ),
            Row(
                "Resources",
                [
                    Panel(
                        "CPU by service process",
                        [
                            Query(
                                f'sum by (job) (rate(process_cpu_seconds_total{{job=~".*service"}}[{RATE}]))', "{{job}}"
                            )
                        ],
                        unit="percentunit",
                        description="Each service's own process (works locally and in compose); 1.0 = one core.",
                    ),
                    Panel(
                        "Memory (RSS) by service process",
                        [Query('sum by (job) (process_resident_memory_bytes{job=~".*service"})', "{{job}}")],
                        unit="bytes",
                        description="Target: every service under 150 MB.",
                    ),
                    Panel(
                        "CPU by container (cAdvisor)",
                        [
                            Query(
                                f'sum by (name) (rate(container_cpu_usage_seconds_total{{name=~".+"}}[{RATE}]))',
                                "{{name}}",
                            )
                        ],
                        unit="percentunit",
                        description="Compose only: cAdvisor sees every container, RabbitMQ and PostgreSQL included.",
                    ),
                    Panel(
                        "Memory by container (cAdvisor)",
                        [Query('sum by (name) (container_memory_working_set_bytes{name=~".+"})', "{{name}}")],
                        unit="bytes",
                        description="Compose only.",
                    ),
                ],
            ),
        ],
    )


def messaging() -> Dashboard:
    per_object = 'job="rabbitmq-per-object"'
    return Dashboard(
        "messaging",
        "Event Fleet - messaging",
        "RabbitMQ queues and rates, the consumers' outcomes, end-to-end latency and the outbox.",
        [
            Row(
                "Queues",
                [
                    Panel(
                        "Queue depth (ready) by queue",
                        [
                            Query(
                                f"sum by (vhost, queue) (rabbitmq_queue_messages_ready{{{per_object}, {MAIN_QUEUES}}})",
                                "{{queue}} ({{vhost}})",
                            )
                        ],
                        description="Grows while consumers are slower than publishers (or stopped); drains after.",
                    ),
                    Panel(
                        "Unacknowledged by queue",
                        [
                            Query(
                                "sum by (vhost, queue) "
                                f"(rabbitmq_queue_messages_unacked{{{per_object}, {MAIN_QUEUES}}})",
                                "{{queue}} ({{vhost}})",
                            )
                        ],
                        description="Delivered and being handled: bounded by each consumer's prefetch.",
                    ),
                    Panel(
                        "Dead-letter queue depth",
                        [
                            Query(
                                f'sum by (vhost, queue) (rabbitmq_queue_messages{{{per_object}, queue=~".*[.]dlq"}})',
                                "{{queue}} ({{vhost}})",
                            )
                        ],
                        description="Should stay 0. Each message carries x-dead-letter-reason: read it in the UI.",
                    ),
                    Panel(
                        "Waiting for a retry",
                        [
                            Query(
                                f'sum by (vhost, queue) (rabbitmq_queue_messages{{{per_object}, queue=~"retry[.].*"}})',
                                "{{queue}} ({{vhost}})",
                            )
                        ],
                    ),
                    Panel(
                        "Consumers per queue",
                        [
                            Query(
                                f"sum by (vhost, queue) (rabbitmq_queue_consumers{{{per_object}, {MAIN_QUEUES}}})",
                                "{{queue}} ({{vhost}})",
                            )
                        ],
                        description="0 on a queue means its service is down: messages wait for it.",
                        width=24,
                    ),
                ],
            ),
            Row(
                "Broker rates",
                [
                    Panel(
                        "Published, confirmed, delivered, acknowledged (per second)",
                        [
                            Query(
                                f'sum(rate(rabbitmq_channel_messages_published_total{{job="rabbitmq"}}[{RATE}]))',
                                "published",
                            ),
                            Query(
                                f'sum(rate(rabbitmq_channel_messages_confirmed_total{{job="rabbitmq"}}[{RATE}]))',
                                "confirmed",
                            ),
                            Query(
                                f'sum(rate(rabbitmq_channel_messages_delivered_ack_total{{job="rabbitmq"}}[{RATE}]))',
                                "delivered",
                            ),
                            Query(
                                f'sum(rate(rabbitmq_channel_messages_acked_total{{job="rabbitmq"}}[{RATE}]))',
                                "acknowledged",
                            ),
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Redeliveries and unroutable returns (per second)",
                        [
                            Query(
                                f'sum(rate(rabbitmq_channel_messages_redelivered_total{{job="rabbitmq"}}[{RATE}]))',
                                "redelivered",
                            ),
                            Query(
                                "sum(rate(rabbitmq_channel_messages_unroutable_returned_total"
                                f'{{job="rabbitmq"}}[{RATE}]))',
                                "unroutable (returned to publisher)",
                            ),
                        ],
                        unit="ops",
                        description="Redeliveries follow a consumer crash or a lost connection.",
                    ),
                ],
            ),
            Row(
                "Consumers",
                [
                    Panel(
                        "Deliveries by outcome (per second)",
                        [Query(f"sum by (outcome) (rate(messages_consumed_total[{RATE}]))", "{{outcome}}")],
                        unit="ops",
                        stacked=True,
                        description="acked, duplicate (applied before), retried, deferred (a dependency was "
                        "down), dead_lettered.",
                    ),
                    Panel(
                        "Published by outcome (per second)",
                        [Query(f"sum by (outcome) (rate(messages_published_total[{RATE}]))", "{{outcome}}")],
                        unit="ops",
                        description="confirmed; unavailable means the broker was down (the outbox retries).",
                    ),
                    Panel(
                        "End-to-end latency (publish to handled) by queue",
                        _quantiles("message_end_to_end_latency_seconds", "queue"),
                        unit="s",
                        description="Target P95 <= 50 ms for consumers without a simulated delay.",
                    ),
                    Panel(
                        "Handler duration P95 by queue",
                        _quantiles("message_handler_duration_seconds", "queue", quantiles=(0.95,)),
                        unit="s",
                    ),
                    Panel(
                        "Handlers in flight",
                        [Query("sum by (queue) (message_handlers_in_flight)", "{{queue}}")],
                    ),
                    Panel(
                        "Batch size (batched consumers)",
                        _quantiles("message_batch_size", "queue", quantiles=(0.5, 0.95)),
                    ),
                ],
            ),
            Row(
                "Outbox",
                [
                    Panel(
                        "Outbox backlog by service",
                        [Query('sum by (job) (outbox_backlog_rows{job=~".*service"})', "{{job}}")],
                        description="Events committed but not yet confirmed by the broker: grows during a broker "
                        "outage, drains after.",
                    ),
                    Panel(
                        "Age of the oldest unpublished outbox row",
                        [Query('max by (job) (outbox_oldest_row_age_seconds{job=~".*service"})', "{{job}}")],
                        unit="s",
                    ),
                    Panel(
                        "Published by the relay (per second)",
                        [Query(f"sum by (job) (rate(outbox_relayed_total[{RATE}]))", "{{job}}")],
                        unit="ops",
                        description="Events left behind by a crash or an outage and published later.",
                        width=24,
                    ),
                ],
            ),
        ],
    )


def _queue_depth(queue: str) -> Query:
    return Query(
        f'sum by (vhost) (rabbitmq_queue_messages_ready{{job="rabbitmq-per-object", queue="{queue}"}})',
        f"{queue} ({{{{vhost}}}})",
    )


def _accepted(handler: str, method: str) -> Query:
    return Query(
        f'sum(rate(http_requests_total{{handler="{handler}", method="{method}", status=~"2.."}}[{RATE}]))',
        f"accepted {handler}",
    )


def scenarios() -> Dashboard:
    return Dashboard(
        "scenarios",
        "Event Fleet - scenarios",
        "One row per scenario, with the signals that show its pattern at work.",
        [
            Row(
                "Scenario 1: fire-and-forget (register -> welcome email)",
                [
                    Panel(
                        "Registrations accepted vs emails sent (per second)",
                        [_accepted("/register", "POST"), Query(f"sum(rate(emails_sent_total[{RATE}]))", "emails sent")],
                        unit="ops",
                    ),
                    Panel("user_registered_queue depth", [_queue_depth("user_registered_queue")]),
                ],
            ),
            Row(
                "Scenario 2: background payments",
                [
                    Panel(
                        "Payments settled by status (per second)",
                        [
                            _accepted("/process_payment", "POST"),
                            Query(
                                f'sum by (status) (rate(payments_settled_total{{flow="standalone"}}[{RATE}]))',
                                "settled {{status}}",
                            ),
                        ],
                        unit="ops",
                    ),
                    Panel("payment_initiated_queue depth", [_queue_depth("payment_initiated_queue")]),
                ],
            ),
            Row(
                "Scenario 3: fan-out (product update -> search, cache, analytics)",
                [
                    Panel(
                        "Fan-out lag P95 per consumer",
                        _quantiles(
                            "message_end_to_end_latency_seconds",
                            "queue",
                            'queue=~"(search|cache|analytics)_product_updates_queue"',
                            quantiles=(0.95,),
                        ),
                        unit="s",
                        description="Each consumer has its own queue: one slow consumer does not delay the others.",
                    ),
                    Panel(
                        "Product updates published vs handled per consumer (per second)",
                        [
                            _accepted("/products/{product_id}", "PUT"),
                            Query(
                                "sum by (queue) (rate(messages_consumed_total"
                                f'{{queue=~".*_product_updates_queue", outcome="acked"}}[{RATE}]))',
                                "{{queue}}",
                            ),
                            Query(
                                f"sum by (queue) (rate(stale_events_ignored_total[{RATE}]))", "stale ignored {{queue}}"
                            ),
                        ],
                        unit="ops",
                    ),
                ],
            ),
            Row(
                "Scenario 4: CPU job offloading (reports)",
                [
                    Panel("report_jobs_queue depth", [_queue_depth("report_jobs_queue")], width=8),
                    Panel(
                        "Jobs finished by status (per second)",
                        [Query(f"sum by (status) (rate(report_jobs_total[{RATE}]))", "{{status}}")],
                        unit="ops",
                        width=8,
                    ),
                    Panel(
                        "Job duration and queue wait",
                        [
                            *_quantiles("report_job_duration_seconds", "status", quantiles=(0.5, 0.95)),
                            *_quantiles("report_job_queue_wait_seconds", "report_type", quantiles=(0.95,)),
                        ],
                        unit="s",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Scenario 5: the order saga",
                [
                    Panel(
                        "Saga outcomes by status and reason (per second)",
                        [
                            Query(
                                f"sum by (status, reason) (rate(saga_duration_seconds_count[{RATE}]))",
                                "{{status}} {{reason}}",
                            )
                        ],
                        unit="ops",
                        width=8,
                    ),
                    Panel(
                        "Saga completion time",
                        _quantiles("saga_duration_seconds", "status", quantiles=(0.5, 0.95)),
                        unit="s",
                        width=8,
                        description="From order accepted to completed/failed. Target P95 <= payment delay + 300 ms.",
                    ),
                    Panel(
                        "Compensations and reservations (per second)",
                        [
                            Query(f"sum by (action) (rate(saga_compensations_total[{RATE}]))", "{{action}}"),
                            Query(
                                f"sum by (outcome) (rate(stock_reservations_total[{RATE}]))", "reservation {{outcome}}"
                            ),
                        ],
                        unit="ops",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Scenario 6: buffered ingestion (clicks)",
                [
                    Panel(
                        "Clicks ingested vs counted (per second)",
                        [
                            Query(f"sum(rate(clicks_ingested_total[{RATE}]))", "ingested (confirmed by the broker)"),
                            Query(f"sum(rate(clicks_counted_total[{RATE}]))", "counted (committed)"),
                        ],
                        unit="ops",
                        description="During a burst ingestion outpaces counting and the queue absorbs the "
                        "difference; afterwards both totals are equal.",
                    ),
                    Panel("click_tracked_queue depth", [_queue_depth("click_tracked_queue")]),
                ],
            ),
        ],
    )


DASHBOARDS = (fleet_overview, messaging, scenarios)


def to_grafana(dashboard: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": dashboard.tags,
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if panel.stacked:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": custom if panel.kind == "timeseries" else {}},
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        if panel.kind == "timeseries"
        else {},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def render_all() -> dict[Path, str]:
    return {
        DASHBOARD_DIR / f"{builder().uid}.json": json.dumps(to_grafana(builder()), indent=2) + "\n"
        for builder in DASHBOARDS
    }


def main() -> None:
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in render_all().items():
        path.write_text(text)


if __name__ == "__main__":
    main()
