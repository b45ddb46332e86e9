"""`make compare` (python -m bench.compare): the asynchronous fleet against the synchronous one, on this machine.

For each fleet in turn (started with the test harness as `make run` and `make run-sync` start them: the
services' default settings, the design document's delays, a database of its own; the other fleet is
stopped meanwhile, so neither measures the other's idle work):
1. k6's default profile (k6-tests/script-async.js with MODE=async or MODE=sync): P95 and P99 per
   scenario, errors and failed checks; the CPU the fleet used (its services, report workers, PostgreSQL
   and, for the asynchronous fleet, RabbitMQ) and its peak memory (RSS of every process).
2. Ramps of registrations and clicks (k6-tests/ramp.js): the highest constant rate each fleet holds with
   P95 under the stated limit and no errors.
3. Resilience: registrations at a steady pace while the email service is stopped for a while: what the
   fleet answered before, during and after, and how many welcome emails were delivered in the end.
Then it writes docs/compare/ (results.json, results.md, compare.png) and README.md's comparison block.

`--short` is CI's profile: the smoke load, two ramp steps and a brief outage, into a directory of its own;
it fails on an empty or vacuous series (a scenario with no successful request, a ramp that never held).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.analysis import percentile, ramp_rates
from bench.compare_render import render_comparison, vacuous_series
from bench.ledger import POSTGRES_COMMANDS, RABBITMQ_COMMANDS, ProcessGroup, cpu_used, processes_named, read_cpu
from bench.run import (
    ARTIFACTS,
    CLICK_P95_LIMIT_MS,
    ROOT,
    PeakMemory,
    dependency_versions,
    describe_machine,
    load_average,
    ramp,
    say,
    simulated_delays,
    wait_until,
    warm_up,
)
from common.addresses import FleetMode
from devtools.fleet import services_of
from tests.support.fleet import Fleet
from tests.support.infra import Infra, isolated_infra
from tests.support.k6 import FLEET_SCRIPT, run_k6, service_urls

MODES: tuple[FleetMode, ...] = ("async", "sync")
# A registration is held below this P95: the synchronous one includes the email server's 0.5 s.
REGISTER_P95_LIMIT_MS = 1000.0
EXPECTED_REGISTER_STATUS = {"async": 202, "sync": 201}
RESILIENCE_EMAIL = "resilience-{run}-{index}@example.com"
REPORT_WORKERS = "report workers"
EMAIL_BACKLOG_WAIT_S = 120.0


@dataclass(frozen=True)
class Profile:
    """How long and how hard each part runs: the full comparison, or CI's short one."""

    k6_profile: str
    ramp_start: float
    ramp_factor: float
    ramp_max: float
    step_s: int
    resilience_s: float
    outage_after_s: float
    outage_s: float
    resilience_workers: int


FULL = Profile("default", 25, 1.6, 3000, 8, 40.0, 10.0, 15.0, 5)
SHORT = Profile("smoke", 20, 2.0, 40, 4, 12.0, 3.0, 4.0, 2)


def fleet_groups(fleet: Fleet, mode: FleetMode) -> list[ProcessGroup]:
    groups = [ProcessGroup(spec.name, lambda name=spec.name: [fleet.pid(name)]) for spec in services_of(mode)]
    groups.append(ProcessGroup(REPORT_WORKERS, lambda: fleet.worker_processes("reportservice")))
    groups.append(ProcessGroup("postgresql", lambda: processes_named(POSTGRES_COMMANDS), include_reaped=True))
    if mode == "async":
        groups.append(ProcessGroup("rabbitmq", lambda: processes_named(RABBITMQ_COMMANDS), include_reaped=True))
    return groups


def fleet_memory_mb(peak: Mapping[str, Mapping[str, float | None]]) -> float:
    return round(sum(value or 0.0 for figures in peak.values() for value in figures.values()), 1)


async def default_profile(fleet: Fleet, mode: FleetMode, profile: Profile, run_dir: Path) -> dict[str, Any]:
    groups = fleet_groups(fleet, mode)
    before = read_cpu(groups)
    started = time.monotonic()
    run = await run_k6(
        FLEET_SCRIPT,
        {"PROFILE": profile.k6_profile, "MODE": mode, **service_urls(fleet)},
        run_dir / f"k6-{mode}",
        timeout_s=400,
    )
    window_s = time.monotonic() - started
    cpu = cpu_used(before, read_cpu(groups))
    if run.summary is None:
        raise RuntimeError(f"k6 wrote no summary for the {mode} fleet:\n{run.output}")
    print(run.output, flush=True)
    # Per accepted request, the status polls the asynchronous fleet's clients need included in its cost;
    # the report workers apart, since 10 s of hashing per report would hide everything else.
    requests = sum(row["accepted"] for row in run.summary["accept_latency"])
    fleet_cpu_s = round(sum(value for group, value in cpu.items() if group != REPORT_WORKERS), 3)
    return {
        "accept_latency": run.summary["accept_latency"],
        "checks": run.summary["checks"],
        "http_req_failed_rate": run.summary["http_req_failed_rate"],
        "dropped_iterations": run.summary["dropped_iterations"],
        "completion_ms": run.summary["completion_ms"],
        "thresholds_failed": run.summary["thresholds_failed"],
        "exit_code": run.exit_code,
        "window_s": round(window_s, 1),
        "requests": requests,
        "cpu_s": cpu,
        "fleet_cpu_s": fleet_cpu_s,
        "report_workers_cpu_s": round(cpu.get(REPORT_WORKERS, 0.0), 3),
        "cpu_ms_per_request": round(fleet_cpu_s * 1000 / requests, 2) if requests else None,
    }


async def ramps(fleet: Fleet, mode: FleetMode, profile: Profile, run_dir: Path) -> dict[str, Any]:
    rates = ramp_rates(profile.ramp_start, profile.ramp_factor, profile.ramp_max)
    measured = {}
    for flow, service, limit_ms, variables in (
        ("register", "userservice", REGISTER_P95_LIMIT_MS, {"EXPECTED_STATUS": str(EXPECTED_REGISTER_STATUS[mode])}),
        ("click", "analyticsservice", CLICK_P95_LIMIT_MS, {}),
    ):
        say(f"{mode} fleet: {flow} ramp from {rates[0]}/s (P95 < {limit_ms:.0f} ms, no errors)")
        steps = await ramp(
            f"{mode}-{flow}",
            fleet.url(service),
            fleet.pid(service),
            rates,
            profile.step_s,
            run_dir,
            p95_limit_ms=limit_ms,
            variables={"FLOW": flow, **variables},
        )
        held = max((step["target_rate"] for step in steps if step["held"]), default=0)
        measured[flow] = {"p95_limit_ms": limit_ms, "held_rate": held, "steps": steps}
    return measured


@dataclass
class Answer:
    at_s: float
    status: int
    latency_ms: float
    email: str
    user_id: int | None


async def resilience(fleet: Fleet, infra: Infra, mode: FleetMode, profile: Profile) -> dict[str, Any]:
    """Registrations from a few steady clients while emailservice is stopped for `outage_s`."""
    run = secrets.token_hex(3)
    answers: list[Answer] = []
    started = time.monotonic()
    counter = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal counter
        while time.monotonic() - started < profile.resilience_s:
            counter += 1
            email = RESILIENCE_EMAIL.format(run=run, index=counter)
            sent = time.monotonic()
            try:
                response = await http.post(f"{fleet.url('userservice')}/register", json={"email": email})
                status = response.status_code
                user_id = response.json().get("id") if response.is_success else None
            except httpx.HTTPError:
                status, user_id = 0, None  # no answer at all
            answers.append(Answer(sent - started, status, (time.monotonic() - sent) * 1000, email, user_id))
            await asyncio.sleep(0.2)

    async def outage() -> tuple[float, float]:
        await asyncio.sleep(profile.outage_after_s)
        down_at = time.monotonic() - started
        await fleet.stop("emailservice")
        await asyncio.sleep(profile.outage_s)
        await fleet.start("emailservice")
        return down_at, time.monotonic() - started

    async with httpx.AsyncClient(timeout=70.0) as http:
        clients = [client(http) for _ in range(profile.resilience_workers)]
        (down_at, up_at), *_ = await asyncio.gather(outage(), *clients)

    def phase(answer: Answer) -> str:
        return "before" if answer.at_s < down_at else "during" if answer.at_s < up_at else "after"

    phases: dict[str, dict[str, Any]] = {}
    for name in ("before", "during", "after"):
        chosen = [answer for answer in answers if phase(answer) == name]
        statuses: dict[str, int] = {}
        for answer in chosen:
            statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
        p95_ms = percentile([answer.latency_ms for answer in chosen], 0.95)
        phases[name] = {
            "requests": len(chosen),
            "statuses": dict(sorted(statuses.items())),
            "p95_ms": None if p95_ms is None else round(p95_ms, 1),
        }
    accepted = [answer for answer in answers if answer.status == EXPECTED_REGISTER_STATUS[mode]]

    async def emails() -> tuple[int, int]:
        return await welcome_emails(infra, RESILIENCE_EMAIL.format(run=run, index="%"))

    # The asynchronous fleet delivers what waited in the queue once the email service is back.
    await wait_until(lambda: _all_emailed(emails, len(accepted)), 60)
    registered, emailed = await emails()
    return {
        "clients": profile.resilience_workers,
        "email_down_from_s": round(down_at, 1),
        "email_down_until_s": round(up_at, 1),
        "phases": phases,
        "accepted": len(accepted),
        "refused": len(answers) - len(accepted),
        "users_registered": registered,
        "welcome_emails_delivered": emailed,
    }


async def _all_emailed(emails: Any, accepted: int | None) -> bool:
    """Whether `accepted` users (every user registered, for None) have their welcome email."""
    registered, emailed = await emails()
    return bool(emailed >= (registered if accepted is None else accepted))


async def welcome_emails(infra: Infra, pattern: str) -> tuple[int, int]:
    """(users registered with an email like `pattern`, welcome emails sent to them), from the database."""
    connection = await asyncpg.connect(infra.database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS users, count(*) FILTER (WHERE EXISTS ("
            "  SELECT 1 FROM emailservice.sent_emails e WHERE e.user_id = u.id)) AS emailed"
            " FROM userservice.users u WHERE u.email LIKE $1",
            pattern,
        )
    finally:
        await connection.close()
    assert row is not None
    return int(row["users"]), int(row["emailed"])


async def measure_fleet(mode: FleetMode, profile: Profile, run_dir: Path) -> dict[str, Any]:
    environment = {"FLEET_MODE": mode}
    async with isolated_infra() as infra, httpx.AsyncClient(timeout=70.0) as http:
        fleet = Fleet(infra, run_dir / f"logs-{mode}", environment, services=services_of(mode))
        try:
            say(f"starting the {mode} fleet")
            await fleet.start()
            await warm_up(http, fleet)
            await asyncio.sleep(3)
            peak = PeakMemory(fleet)
            async with peak.sampling():
                say(f"{mode} fleet: k6 {profile.k6_profile} profile (MODE={mode})")
                measured: dict[str, Any] = {"profile": await default_profile(fleet, mode, profile, run_dir)}
            measured["memory_peak_mb"] = fleet_memory_mb(peak.peak)
            measured["memory_peak"] = peak.peak
            # Before the ramps, whose thousands of registrations would queue ahead of the outage's emails
            # (the email service sends about 40 a second); after the profile's own emails have gone out.
            await wait_until(lambda: _all_emailed(lambda: welcome_emails(infra, "%"), None), EMAIL_BACKLOG_WAIT_S)
            say(f"{mode} fleet: registrations while emailservice is down for {profile.outage_s:.0f} s")
            measured["resilience"] = await resilience(fleet, infra, mode, profile)
            say(f"{mode} fleet: {measured['resilience']}")
            measured["ramps"] = await ramps(fleet, mode, profile, run_dir)
            if mode == "async":
                measured["versions"] = await dependency_versions(infra)
            return measured
        finally:
            say(f"stopping the {mode} fleet")
            await fleet.close()


async def measure(profile: Profile, short: bool) -> dict[str, Any]:
    started = datetime.now(UTC)
    run_dir = ARTIFACTS / f"compare-{started.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "short": short,
        "load_average": {"start": load_average()},
        "settings": {
            "k6_profile": profile.k6_profile,
            "step_s": profile.step_s,
            "register_p95_limit_ms": REGISTER_P95_LIMIT_MS,
            "click_p95_limit_ms": CLICK_P95_LIMIT_MS,
            "outage_s": profile.outage_s,
            "resilience_s": profile.resilience_s,
            "delays": {name: value for name, value in simulated_delays().values()},
        },
        "artifacts": str(run_dir.relative_to(ROOT)),
        "fleets": {},
    }
    say(f"artifacts in {run_dir}")
    for mode in MODES:
        results["fleets"][mode] = await measure_fleet(mode, profile, run_dir)
    versions = results["fleets"]["async"].pop("versions", {})
    results["machine"].update(versions)
    results["load_average"]["end"] = load_average()
    results["duration_s"] = round((datetime.now(UTC) - started).total_seconds())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "compare", help="where the report goes")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README to update ('' for none)")
    parser.add_argument("--short", action="store_true", help="CI's profile: a smoke load, brief ramps and outage")
    parser.add_argument("--render-only", action="store_true", help="render the report again from results.json")
    arguments = parser.parse_args()

    results_path = arguments.output / "results.json"
    if arguments.render_only:
        results = json.loads(results_path.read_text())
    else:
        results = asyncio.run(measure(SHORT if arguments.short else FULL, arguments.short))
        arguments.output.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    written = render_comparison(results, arguments.output, Path(arguments.readme) if arguments.readme else None)
    say("wrote " + ", ".join(str(path) for path in written))
    problems = vacuous_series(results)
    if problems:
        raise SystemExit("the comparison has empty or vacuous series:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
