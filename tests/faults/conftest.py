"""The fault suite's own broker, database and fleet, and the report its tests add rows to."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, FAST_FLEET_ENVIRONMENT
from tests.faults.load import RATE_PER_S, RECOVERY_BOUND_S
from tests.faults.private_infra import PrivateInfra, private_infra
from tests.faults.reconcile import ReportRow, render_report
from tests.support.fleet import Fleet
from tests.support.infra import Infra
from tests.support.rabbitmq import Management

# The e2e settings, with INFO logs: DEBUG lines for every request at this rate only slow the machine.
FAULT_FLEET_ENVIRONMENT = {**FAST_FLEET_ENVIRONMENT, "LOG_LEVEL": "INFO"}


@pytest.fixture(scope="package")
async def private() -> AsyncIterator[PrivateInfra]:
    async with private_infra(_private_root() / "infra") as running:
        yield running


def _private_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fault-infra-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder
    return root


@pytest.fixture(scope="package")
def infra(private: PrivateInfra) -> Infra:
    return private.infra


@pytest.fixture(scope="package")
async def management(infra: Infra) -> AsyncIterator[Management]:
    client = Management(infra)
    yield client
    await client.close()


@pytest.fixture(scope="package")
async def fleet(infra: Infra) -> AsyncIterator[Fleet]:
    log_dir = ARTIFACTS / f"faults-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    running = Fleet(infra, log_dir, FAULT_FLEET_ENVIRONMENT)
    try:
        await running.start()
        yield running
    finally:
        await running.close()


@pytest.fixture(scope="package")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        yield client


class FaultReport:
    def __init__(self) -> None:
        self.rows: list[ReportRow] = []
        self.notes: list[str] = []

    def add(self, row: ReportRow, note: str) -> None:
        self.rows.append(row)
        self.notes.append(f"- **{row.fault}**: {note}")

    def extend_last_note(self, text: str) -> None:
        self.notes[-1] += f" {text}"

    def in_fault_order(self) -> tuple[list[ReportRow], list[str]]:
        """The faults under load first, in the order they ran; the fuzzing (no ledger) last."""
        entries = sorted(zip(self.rows, self.notes, strict=True), key=lambda entry: entry[0].lost is None)
        return [row for row, _ in entries], [note for _, note in entries]


@pytest.fixture(scope="package")
def fault_report(request: pytest.FixtureRequest) -> Iterator[FaultReport]:
    """Rows added by each fault test; written as markdown when the package is done (also on failure)."""
    report = FaultReport()
    yield report
    if not report.rows:
        return
    rows, notes = report.in_fault_order()
    text = render_report(
        rows,
        {
            "date": f"{datetime.now(UTC):%Y-%m-%d}",
            "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
            f"{_cpus()} cores",
            "rate": RATE_PER_S,
            "recovery_bound_s": RECOVERY_BOUND_S,
            "notes": notes,
        },
    )
    destinations = [ARTIFACTS / "fault-injection-report.md"]
    if chosen := request.config.getoption("fault_report"):
        destinations.append(Path(chosen))
    for destination in destinations:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
