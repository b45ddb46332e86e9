"""Running one fault under the steady mixed load and reconciling it: shared by the fault tests of a single
node (test_faults_under_load.py) and of the cluster (test_cluster.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from devtools.fleet import SERVICES
from tests.faults.conftest import FaultReport
from tests.faults.load import RATE_PER_S, RECOVERY_BOUND_S, Ledger, LoadGenerator, Phase, prepare_phase
from tests.faults.private_infra import PrivateInfra
from tests.faults.reconcile import Findings, SagaTimeouts, finalize, reconcile, report_row
from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

WARMUP_S = 4.0  # load before the fault, so it strikes mid-stream
OUTAGE_S = 4.0  # how long a dependency stays down
AFTER_S = 4.0  # load after recovery
SETTLE_TIMEOUT_S = 120.0
ALL_SERVICES = tuple(service.name for service in SERVICES)

_PHASE_NUMBERS = itertools.count(1)  # phases never share amounts or names, even after a failed test

Inject = Callable[[], Awaitable[tuple[float | None, str]]]  # (seconds to recover, what happened)


async def all_ready(fleet: Fleet, http: httpx.AsyncClient, names: tuple[str, ...] = ALL_SERVICES) -> float:
    """Seconds until every named service answers /ready with 200 (each finds its way back alone)."""
    started = time.monotonic()

    async def ready(name: str) -> bool:
        try:
            return (await http.get(f"{fleet.url(name)}/ready", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def everyone() -> bool:
        return all(await asyncio.gather(*(ready(name) for name in names)))

    await eventually(everyone, timeout=RECOVERY_BOUND_S, interval=0.1, message="the fleet did not recover")
    return time.monotonic() - started


async def settle(
    private: PrivateInfra, fleet: Fleet, management: Management, phase: Phase, ledger: Ledger
) -> tuple[Findings, float]:
    """Reconcile until nothing is pending (or SETTLE_TIMEOUT_S passes: then pending means lost)."""
    started = time.monotonic()
    while True:
        findings = await reconcile(private.infra, management, phase, ledger, SagaTimeouts.of(fleet))
        if not findings.pending or time.monotonic() - started > SETTLE_TIMEOUT_S:
            return finalize(findings), time.monotonic() - started
        await asyncio.sleep(1.0)


async def dead_letters(management: Management) -> dict[str, list[dict[str, Any]]]:
    letters = {}
    for queue in await management.queues():
        if queue["name"].endswith(".dlq") and queue.get("messages", 0):
            letters[queue["name"]] = await management.peek(queue["name"], count=1000)
    return letters


async def run_fault(
    fault: str,
    inject: Inject,
    *,
    private: PrivateInfra,
    fleet: Fleet,
    http: httpx.AsyncClient,
    management: Management,
    fault_report: FaultReport,
    during_load: Callable[[Phase], Awaitable[None]] | None = None,
    ledger: Ledger | None = None,
) -> Findings:
    """Run the mixed load, inject the fault, reconcile; `ledger` (a new one by default) keeps the requests."""
    phase = await prepare_phase(fleet, http, fault.split()[0].lower(), next(_PHASE_NUMBERS))
    ledger = Ledger() if ledger is None else ledger
    async with LoadGenerator(fleet, http, phase, ledger, RATE_PER_S):
        await asyncio.sleep(WARMUP_S)
        recovery_s, note = await inject()
        if during_load is not None:
            await during_load(phase)
        await asyncio.sleep(AFTER_S)
    findings, settled_s = await settle(private, fleet, management, phase, ledger)
    outcomes = ledger.outcomes()
    fault_report.add(
        report_row(fault, ledger, findings, recovery_s, settled_s),
        f"{note} Unanswered requests (the answer was lost): {findings.unknown_applied} took effect once, "
        f"{findings.unknown_not_applied} not at all.",
    )
    rejected = [
        f"{a.kind} {a.correlation_id}: {a.status} {a.detail}" for a in ledger.attempts if a.outcome == "rejected"
    ]
    assert not rejected, f"valid requests were refused with a client error: {rejected[:10]}"
    # Not a target, a sanity check: the load reached a working fleet most of the time.
    assert outcomes["accepted"] > 0.3 * len(ledger.attempts), f"the fleet accepted too little: {outcomes}"
    assert not findings.problems, "\n".join(findings.problems[:40])
    assert recovery_s is None or recovery_s < RECOVERY_BOUND_S
    return findings
