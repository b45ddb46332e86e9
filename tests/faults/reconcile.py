"""Reconciling the load generator's ledger against what the fleet actually did.

The truth is read from each service's own tables (one schema per service) and from the broker's
management API: every accepted request must have its effect exactly once, every request whose
answer was lost may have it at most once, every refused request must have none, every order must
be terminal with money and stock adding up, and every queue and outbox must drain. An order may end
in a saga timeout only if a participant was down for longer than SAGA_TIMEOUT_S while it lived (the
fleet records every stop and start): any other timeout means a saga message was lost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from orderservice.settings import Settings as OrderSettings
from tests.faults.load import ORDER_STOCK, Attempt, Ledger, Phase
from tests.support.fleet import Fleet, Outage
from tests.support.infra import Infra
from tests.support.rabbitmq import Management

SERVICE_SCHEMAS = (
    "userservice",
    "emailservice",
    "paymentservice",
    "productservice",
    "searchservice",
    "cacheservice",
    "analyticsservice",
    "reportservice",
    "orderservice",
    "inventoryservice",
)
# The saga's participants: an order can only wait for them (the order service's own outage delays its
# timeout watch, it does not make an order miss its steps).
SAGA_PARTICIPANTS = ("paymentservice", "inventoryservice")


@dataclass
class Findings:
    """Each finding is (what, how many requests it concerns). `pending` may still resolve (the fleet is
    catching up); everything else is final."""

    pending: list[tuple[str, int]] = field(default_factory=list)
    lost: list[tuple[str, int]] = field(default_factory=list)
    duplicated: list[tuple[str, int]] = field(default_factory=list)
    refused_but_applied: list[tuple[str, int]] = field(default_factory=list)
    inconsistent: list[tuple[str, int]] = field(default_factory=list)
    unknown_applied: int = 0
    unknown_not_applied: int = 0

    @property
    def problems(self) -> list[str]:
        return [what for what, _ in self.lost + self.duplicated + self.refused_but_applied + self.inconsistent]

    @property
    def lost_count(self) -> int:
        return sum(count for _, count in self.lost)

    @property
    def duplicated_count(self) -> int:
        return sum(count for _, count in self.duplicated)


def asyncpg_dsn(infra: Infra) -> str:
    return infra.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass(frozen=True)
class SagaTimeouts:
    """What makes a saga timeout legitimate: the order service's SAGA_TIMEOUT_S, and every outage of
    a service during the run."""

    saga_timeout_s: float
    outages: Sequence[Outage] = ()

    @classmethod
    def of(cls, fleet: Fleet) -> SagaTimeouts:
        configured = fleet.environment("orderservice").get("SAGA_TIMEOUT_S")
        default = OrderSettings.model_fields["saga_timeout_s"].default
        return cls(float(configured) if configured else float(default), tuple(fleet.outages))

    def down_s(self, service: str, start: datetime, end: datetime) -> float:
        """How long `service` was down between `start` and `end` (overlapping outages counted once)."""
        now = datetime.now(UTC)
        spans = sorted(
            (max(outage.down_at, start), min(outage.up_at or now, end))
            for outage in self.outages
            if outage.service == service
        )
        total, covered_until = 0.0, start
        for down, up in spans:
            down = max(down, covered_until)
            if up > down:
                total += (up - down).total_seconds()
                covered_until = up
        return total

    def explains(self, created_at: datetime, ended_at: datetime) -> bool:
        """Whether a participant was down for longer than SAGA_TIMEOUT_S while the order lived."""
        return any(self.down_s(service, created_at, ended_at) > self.saga_timeout_s for service in SAGA_PARTICIPANTS)


async def reconcile(
    infra: Infra, management: Management, phase: Phase, ledger: Ledger, timeouts: SagaTimeouts
) -> Findings:
    findings = Findings()
    connection = await asyncpg.connect(asyncpg_dsn(infra), timeout=5)
    try:
        await _registrations(connection, ledger, findings)
        await _clicks(connection, phase, ledger, findings)
        await _orders(connection, phase, ledger, findings, timeouts)
        await _payments(connection, ledger, findings)
        await _renames(connection, phase, ledger, findings)
        await _outboxes_drained(connection, findings)
    finally:
        await connection.close()
    await _queues_drained(management, findings)
    return findings


def finalize(findings: Findings) -> Findings:
    """At the deadline, whatever an accepted request is still waiting for has been lost."""
    findings.lost.extend(findings.pending)
    findings.pending = []
    return findings


async def _registrations(connection: asyncpg.Connection, ledger: Ledger, findings: Findings) -> None:
    attempts = ledger.of("register")
    rows = await connection.fetch(
        "SELECT u.email, count(e.id) AS emails FROM userservice.users u "
        "LEFT JOIN emailservice.sent_emails e ON e.user_id = u.id WHERE u.email = ANY($1) GROUP BY u.email",
        [attempt.key for attempt in attempts],
    )
    emails = {row["email"]: int(row["emails"]) for row in rows}
    for attempt in attempts:
        sent = emails.get(attempt.key)
        label = f"registration {attempt.key} ({attempt.outcome})"
        if attempt.outcome == "accepted":
            if sent is None:
                findings.lost.append((f"{label}: no such user", 1))
            elif sent == 0:
                findings.pending.append((f"{label}: not emailed", 1))
        elif attempt.outcome == "unknown":
            if sent is None:
                findings.unknown_not_applied += 1
            else:
                findings.unknown_applied += 1
                if sent == 0:
                    findings.pending.append((f"{label}: registered but not emailed", 1))
        elif sent is not None:
            findings.refused_but_applied.append((f"{label}: the user exists", 1))
        if sent is not None and sent > 1:
            findings.duplicated.append((f"{label}: emailed {sent} times", sent - 1))


async def _clicks(connection: asyncpg.Connection, phase: Phase, ledger: Ledger, findings: Findings) -> None:
    attempts = ledger.of("click")
    accepted = Counter(a.key for a in attempts if a.outcome == "accepted")
    unknown = Counter(a.key for a in attempts if a.outcome == "unknown")
    pages = sorted({a.key for a in attempts})
    rows = await connection.fetch("SELECT page, clicks FROM analyticsservice.click_counts WHERE page = ANY($1)", pages)
    counted = {row["page"]: int(row["clicks"]) for row in rows}
    for page in pages:
        _counted_once(f"clicks on {page}", counted.get(page, 0), accepted[page], unknown[page], findings)


def _counted_once(what: str, counted: int, accepted: int, unanswered: int, findings: Findings) -> None:
    """A counter that each accepted request adds one to, and each unanswered one at most one."""
    if counted < accepted:
        findings.pending.append((f"{what}: {counted} counted of {accepted} accepted", accepted - counted))
    elif counted > accepted + unanswered:
        excess = counted - accepted - unanswered
        findings.duplicated.append(
            (f"{what}: {counted} counted, {accepted} accepted (+{unanswered} unanswered)", excess)
        )
    else:
        findings.unknown_applied += counted - accepted
        findings.unknown_not_applied += accepted + unanswered - counted


def _created_once(attempt: Attempt, created: int, label: str, thing: str, findings: Findings) -> None:
    """A request that creates one row: accepted, exactly one; unanswered, at most one; refused, none."""
    if created > 1:
        findings.duplicated.append((f"{label}: {created} {thing}s", created - 1))
    if created == 0:
        if attempt.outcome == "accepted":
            findings.lost.append((f"{label}: no such {thing}", 1))
        elif attempt.outcome == "unknown":
            findings.unknown_not_applied += 1
    elif attempt.outcome == "refused":
        findings.refused_but_applied.append((f"{label}: the {thing} exists", 1))
    elif attempt.outcome == "unknown":
        findings.unknown_applied += 1


async def _orders(
    connection: asyncpg.Connection, phase: Phase, ledger: Ledger, findings: Findings, timeouts: SagaTimeouts
) -> None:
    attempts = ledger.of("order")
    rows = await connection.fetch(
        "SELECT id, correlation_id, quantity, status, failure_reason, payment_behaviour, created_at, updated_at "
        "FROM orderservice.orders WHERE correlation_id = ANY($1)",
        [attempt.correlation_id for attempt in attempts],
    )
    by_correlation: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_correlation.setdefault(row["correlation_id"], []).append(row)
    charges = {
        row["order_id"]: int(row["charges"])
        for row in await connection.fetch(
            "SELECT order_id, count(*) FILTER (WHERE status = 'completed') AS charges FROM paymentservice.payments "
            "WHERE order_id = ANY($1) GROUP BY order_id",
            [row["id"] for row in rows],
        )
    }
    for attempt in attempts:
        orders = by_correlation.get(attempt.correlation_id, [])
        label = f"order {attempt.correlation_id} ({attempt.outcome})"
        _created_once(attempt, len(orders), label, "order", findings)
        for order in orders:
            _check_order(order, charges.get(order["id"], 0), label, findings, timeouts)
    await _stock_adds_up(connection, phase, findings)


def _check_order(
    order: asyncpg.Record | dict[str, Any], charges: int, label: str, findings: Findings, timeouts: SagaTimeouts
) -> None:
    status, reason, behaviour = order["status"], order["failure_reason"], order["payment_behaviour"]
    if status not in ("completed", "failed"):
        findings.pending.append((f"{label}: still {status}", 1))
        return
    if charges > 1:
        findings.duplicated.append((f"{label}: charged {charges} times", 1))
    if status == "completed" and charges != 1:
        findings.pending.append((f"{label}: completed with {charges} charges", 1))
    if status == "failed" and charges != 0:
        findings.inconsistent.append((f"{label}: failed ({reason}) but charged", 1))
    expected = {"succeed": ("completed", None), "fail": ("failed", "payment_declined")}[behaviour]
    if (status, reason) == expected:
        return
    if reason == "timeout":
        # The order's life: from its creation to its timeout (the timeout watch stamps `updated_at`).
        if not timeouts.explains(order["created_at"], order["updated_at"]):
            lived_s = (order["updated_at"] - order["created_at"]).total_seconds()
            findings.lost.append(
                (
                    f"{label}: timed out after {lived_s:.1f} s, though no saga participant was down for longer "
                    f"than SAGA_TIMEOUT_S ({timeouts.saga_timeout_s:g} s) meanwhile: a saga message was lost",
                    1,
                )
            )
        return
    findings.inconsistent.append((f"{label}: ended {status} ({reason}) though payment was set to {behaviour}", 1))


async def _stock_adds_up(connection: asyncpg.Connection, phase: Phase, findings: Findings) -> None:
    stock = await connection.fetchrow(
        "SELECT available, reserved, sold, total FROM inventoryservice.stock WHERE product_id = $1",
        phase.order_product_id,
    )
    sold_by_orders = await connection.fetchval(
        "SELECT coalesce(sum(quantity), 0) FROM orderservice.orders WHERE product_id = $1 AND status = 'completed'",
        phase.order_product_id,
    )
    if stock is None:
        findings.lost.append((f"inventory has no stock for product {phase.order_product_id}", 1))
        return
    figures = f"available {stock['available']}, reserved {stock['reserved']}, sold {stock['sold']}"
    if stock["total"] != ORDER_STOCK or stock["available"] + stock["reserved"] + stock["sold"] != ORDER_STOCK:
        findings.inconsistent.append((f"stock identity broken: {figures}, total {stock['total']} of {ORDER_STOCK}", 1))
    if stock["reserved"] != 0 or stock["sold"] != sold_by_orders:
        findings.pending.append((f"stock not settled: {figures}; completed orders bought {sold_by_orders}", 1))


async def _payments(connection: asyncpg.Connection, ledger: Ledger, findings: Findings) -> None:
    attempts = ledger.of("payment")
    rows = await connection.fetch(
        "SELECT p.payment_id, p.amount, p.status, a.payment_id IS NOT NULL AS audited FROM paymentservice.payments p "
        "LEFT JOIN paymentservice.payment_audit a ON a.payment_id = p.payment_id "
        "WHERE p.order_id IS NULL AND p.amount = ANY($1)",
        [Decimal(attempt.key) for attempt in attempts],
    )
    by_amount: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_amount.setdefault(f"{row['amount']:.2f}", []).append(row)
    for attempt in attempts:
        payments = by_amount.get(attempt.key, [])
        label = f"payment of {attempt.key} ({attempt.outcome})"
        _created_once(attempt, len(payments), label, "payment", findings)
        for payment in payments:
            if payment["status"] not in ("completed", "failed"):
                findings.pending.append((f"{label}: still {payment['status']}", 1))
            elif payment["status"] == "completed" and not payment["audited"]:
                findings.pending.append((f"{label}: completed but not audited", 1))


async def _renames(connection: asyncpg.Connection, phase: Phase, ledger: Ledger, findings: Findings) -> None:
    attempts = ledger.of("product_update")
    accepted = len([a for a in attempts if a.outcome == "accepted"])
    unknown = len([a for a in attempts if a.outcome == "unknown"])
    product = await connection.fetchrow(
        "SELECT name, product_version FROM productservice.products WHERE id = $1", phase.renamed_product_id
    )
    assert product is not None
    # The catalogue's own row is the latest state; every view of it must reach exactly that.
    for view in ("searchservice.search_documents", "cacheservice.cached_products"):
        row = await connection.fetchrow(
            f"SELECT name, product_version FROM {view} WHERE product_id = $1", phase.renamed_product_id
        )
        shown = None if row is None else (row["name"], row["product_version"])
        if shown != (product["name"], product["product_version"]):
            findings.pending.append((f"{view} shows {shown}, the catalogue has {tuple(product)}", 1))
    counted = await connection.fetchval(
        "SELECT updates FROM analyticsservice.product_update_counts WHERE product_id = $1", phase.renamed_product_id
    )
    # The creation counts as an update too.
    _counted_once("analytics' product updates", int(counted or 0), 1 + accepted, unknown, findings)


async def _outboxes_drained(connection: asyncpg.Connection, findings: Findings) -> None:
    for schema in SERVICE_SCHEMAS:
        waiting = await connection.fetchval(f"SELECT count(*) FROM {schema}.outbox")
        if waiting:
            findings.pending.append((f"{schema}'s outbox still holds {waiting} events", 1))


async def _queues_drained(management: Management, findings: Findings) -> None:
    for queue in await management.queues():
        name = queue["name"]
        if name.endswith(".dlq"):
            continue  # dead-letter queues are checked against the poison each test injected
        if queue.get("messages", 0):
            findings.pending.append((f"queue {name} holds {queue['messages']} messages", 1))


@dataclass(frozen=True)
class ReportRow:
    """None where a figure does not apply to the fault (nothing went down, no ledger to reconcile)."""

    fault: str
    sent: int
    accepted: int
    refused: int
    unknown: int
    lost: int | None
    duplicated: int | None
    recovery_s: float | None
    settled_s: float | None


def report_row(fault: str, ledger: Ledger, findings: Findings, recovery_s: float | None, settled_s: float) -> ReportRow:
    outcomes = ledger.outcomes()
    return ReportRow(
        fault=fault,
        sent=len(ledger.attempts),
        accepted=outcomes["accepted"],
        refused=outcomes["refused"],
        unknown=outcomes["unknown"],
        lost=findings.lost_count,
        duplicated=findings.duplicated_count,
        recovery_s=recovery_s,
        settled_s=settled_s,
    )


def render_report(rows: list[ReportRow], details: dict[str, Any]) -> str:
    lines = [
        "# Fault-injection report",
        "",
        f"Written by `make faults` (the `faults` tests of `make test`) on {details['date']}, "
        f"on {details['machine']}. Each fault ran under steady mixed load of about "
        f"{details['rate']:.0f} requests/s (clicks, registrations, orders with both payment outcomes, "
        "payments, product renames); then every request in the load generator's ledger was reconciled "
        "against the services' tables and the broker's queues. A fault's test fails on any request lost or "
        f"applied twice, and if any service is not ready again within {details['recovery_bound_s']:.0f} s.",
        "",
        "| fault | requests sent | accepted | refused | unanswered | lost | duplicated | time to recover | "
        "time to settle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        figures = (row.sent, row.accepted, row.refused, row.unknown, row.lost, row.duplicated)
        times = (row.recovery_s, row.settled_s)
        lines.append(
            f"| {row.fault} | "
            + " | ".join("-" if figure is None else str(figure) for figure in figures)
            + " | "
            + " | ".join("-" if seconds is None else f"{seconds:.1f} s" for seconds in times)
            + " |"
        )
    lines += [
        "",
        "*Refused*: answered 503, or the connection was refused (the service was down); none may take effect. "
        "*Unanswered*: sent, but the answer was lost (timeout, connection reset); each may take effect at "
        "most once. *Lost*: accepted, yet its effect never appeared. *Duplicated*: an effect applied more than "
        "once. *Time to recover*: from the dependency being back (or the killed services being started again) "
        "until every service answers `/ready` with 200. *Time to settle*: from the end of the load until the "
        "reconciliation found every effect and every queue and outbox empty.",
        "",
        *details["notes"],
        "",
    ]
    return "\n".join(lines)


def elapsed_since(started: float) -> float:
    return time.monotonic() - started
