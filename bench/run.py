"""`make bench` (python -m bench): measure the fleet on this machine and write docs/bench/ and README.md.

1. Starts the ten services with the test harness (a vhost and a database of its own, free ports,
   the services' default settings - the design document's delays), warms each endpoint up briefly.
2. Runs k6's default profile (k6-tests/script-async.js): accept latency per scenario, errors, and
   saga/job/payment completion as a user polling sees it.
3. Reads the services' own metrics before and after: end-to-end latency per queue (publish to
   handled, `message_end_to_end_latency_seconds`) and saga duration (`saga_duration_seconds`).
4. Ramps scenario 6 (k6-tests/ramp.js, constant arrival rates) against analyticsservice, then
   against a bare FastAPI endpoint with the same request body (bench/bare.py): the highest rate each
   holds with P95 < 50 ms and no errors, and the ratio.
5. Samples every service's memory (RSS) idle and under load.
Then it stops everything, removes its vhost and database, and writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.analysis import Accept, Histogram, RampStep, histograms, label, merge, ramp_rates, start_burst, window
from bench.ledger import (
    POSTGRES_COMMANDS,
    RABBITMQ_COMMANDS,
    ProcessGroup,
    build_ledger,
    cpu_used,
    k6_request_counts,
    messages,
    process_times,
    processes_named,
    read_cpu,
    read_cpu_wait,
)
from bench.render import ACCEPT_P95_TARGET_MS, render_outputs
from devtools.fleet import SERVICES
from devtools.provision import admin_dsn, credentials_of
from devtools.rabbitmq_nodes import free_port
from tests.support.fleet import Fleet
from tests.support.infra import Infra, isolated_infra
from tests.support.k6 import FLEET_SCRIPT, K6_SCRIPTS, run_k6, service_urls
from tests.support.metrics import sample

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
RAMP_SCRIPT = K6_SCRIPTS / "ramp.js"
CLICK_P95_LIMIT_MS = 50.0
CLICK_QUEUE = "click_tracked_queue"
MIN_RAMP_RATE = 25
E2E_HISTOGRAM = "message_end_to_end_latency_seconds"
SAGA_HISTOGRAM = "saga_duration_seconds"
QUANTILES = (0.5, 0.95, 0.99)
# The bare endpoint's steady rate beside the default profile: the unit fleet CPU per request is given in.
BARE_RATE = 120
# PostgreSQL's backends flush their statistics when idle, at the latest 10 s after a busy spell.
STATISTICS_SETTLE_S = 11.0
# The A/B: the same profile with reports at almost no cost, to show what report hashing costs the rest.
NEAR_FREE_REPORT_CPU_S = "0.01"
# Every virtual user of the default profile sends its first request in the same instant: the accepts of
# the run's first second are counted apart (how many, how many over the target), to tell that burst from
# the steady state in the tail.
START_BURST_S = 1.0
ACCEPT_SLOW_MS = ACCEPT_P95_TARGET_MS


# --- the machine --------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu": cpu_model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


async def dependency_versions(infra: Infra) -> dict[str, str]:
    versions = {}
    with contextlib.suppress(httpx.HTTPError, KeyError):
        async with httpx.AsyncClient(auth=credentials_of(infra.rabbitmq_url), timeout=5.0) as client:
            overview = (await client.get(f"{infra.management_url}/api/overview")).json()
            versions["rabbitmq"] = overview["rabbitmq_version"]
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        connection = await asyncpg.connect(admin_dsn(infra.database_url))
        try:
            versions["postgresql"] = str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()
    return versions


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# --- memory -------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def memory_of(fleet: Fleet) -> dict[str, dict[str, float | None]]:
    """Each service's own process, and its worker processes (the report workers) together."""
    figures: dict[str, dict[str, float | None]] = {}
    for spec in SERVICES:
        workers = [rss_mb(pid) for pid in fleet.worker_processes(spec.name)]
        figures[spec.name] = {
            "rss_mb": rss_mb(fleet.pid(spec.name)),
            "workers_rss_mb": round(sum(value for value in workers if value), 1) if workers else None,
        }
    return figures


class PeakMemory:
    """Samples the fleet's memory every half second while a block runs; keeps each figure's peak."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self.peak: dict[str, dict[str, float | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def _record(self) -> None:
        for service, figures in memory_of(self._fleet).items():
            peak = self.peak.setdefault(service, {})
            for key, value in figures.items():
                current = peak.get(key)
                peak[key] = value if current is None or (value is not None and value > current) else current

    async def _sample_forever(self) -> None:
        while True:
            self._record()
            await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        self._task = asyncio.create_task(self._sample_forever())
        try:
            yield
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._record()


# --- the services' own metrics --------------------------------------------------------------------


async def scrape(http: httpx.AsyncClient, fleet: Fleet) -> dict[str, str]:
    pages = await asyncio.gather(*(http.get(f"{fleet.url(spec.name)}/metrics") for spec in SERVICES))
    return {spec.name: page.text for spec, page in zip(SERVICES, pages, strict=True)}


def quantiles_ms(histogram: Histogram) -> dict[str, Any]:
    figures: dict[str, Any] = {"count": histogram.count}
    for q in QUANTILES:
        value = histogram.quantile(q)
        figures[f"p{round(q * 100)}_ms"] = None if value is None else round(value * 1000, 1)
        if histogram.beyond_range(q):
            figures[f"p{round(q * 100)}_beyond_range"] = True  # the value is the highest bucket's bound
    return figures


def end_to_end_by_queue(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    by_queue: dict[str, dict[str, Any]] = {}
    for service, text in after.items():
        observed = window(histograms(before.get(service, ""), E2E_HISTOGRAM), histograms(text, E2E_HISTOGRAM))
        for labels, histogram in observed.items():
            if histogram.count > 0:
                by_queue[label(labels, "queue")] = {"consumer": service, **quantiles_ms(histogram)}
    return dict(sorted(by_queue.items()))


def saga_durations(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    observed = window(
        histograms(before["orderservice"], SAGA_HISTOGRAM), histograms(after["orderservice"], SAGA_HISTOGRAM)
    )
    by_outcome: dict[str, list[Histogram]] = {}
    for labels, histogram in observed.items():
        by_outcome.setdefault(label(labels, "status"), []).append(histogram)
    return {
        "all": quantiles_ms(merge(observed.values())),
        **{status: quantiles_ms(merge(series)) for status, series in sorted(by_outcome.items())},
    }


def simulated_delays() -> dict[str, tuple[str, float]]:
    """The queues whose handlers wait on purpose, with the setting and its value in this run."""
    from analyticsservice.settings import Settings as AnalyticsSettings
    from emailservice.settings import Settings as EmailSettings
    from paymentservice.settings import Settings as PaymentSettings
    from reportservice.settings import Settings as ReportSettings

    payment = PaymentSettings()
    return {
        "user_registered_queue": ("EMAIL_SEND_DELAY_S", EmailSettings().email_send_delay_s),
        "payment_initiated_queue": ("PAYMENT_DELAY_S", payment.payment_delay_s),
        "stock_reserved_queue": ("SAGA_PAYMENT_DELAY_S", payment.saga_payment_delay_s),
        "report_jobs_queue": ("REPORT_CPU_SECONDS", ReportSettings().report_cpu_seconds),
        # Not a simulation, a trade: a partial batch of clicks waits this long for company.
        CLICK_QUEUE: ("CLICK_BATCH_MAX_WAIT_S", AnalyticsSettings().click_batch_max_wait_s),
    }


# --- steps ----------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


async def warm_up(http: httpx.AsyncClient, fleet: Fleet) -> None:
    """A few requests per endpoint, so that first-call costs (imports, caches) are not measured."""
    for index in range(5):
        await http.post(
            f"{fleet.url('userservice')}/register", json={"email": f"warm-{index}-{time.time()}@example.com"}
        )
        await http.post(f"{fleet.url('paymentservice')}/process_payment", json={"amount": 1, "currency": "USD"})
        await http.put(f"{fleet.url('productservice')}/products/1", json={"name": f"Laptop {index}"})
        await http.post(
            f"{fleet.url('orderservice')}/create_order",
            json={"product_id": 1, "quantity": 1, "payment_behaviour": "fail"},
        )
        await http.post(f"{fleet.url('analyticsservice')}/track_click", json={"user_id": 1, "page": "warm-up"})
        await http.get(f"{fleet.url('reportservice')}/health")


async def clicks_counted(http: httpx.AsyncClient, fleet: Fleet) -> float:
    """Clicks added to the counts (a message holds one click or several), each once."""
    return await sample(http, fleet.url("analyticsservice"), "clicks_counted_total")


async def wait_until(probe: Callable[[], Any], timeout_s: float) -> float | None:
    """Seconds until `probe()` (awaitable) is true, or None after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await probe():
            return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.25)
    return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (Linux /proc)."""
    times = process_times(pid)
    if times is None:
        raise ProcessLookupError(f"process {pid} is gone")
    return times.own_s


async def ramp(
    name: str,
    url: str,
    pid: int,
    rates: list[int],
    step_s: int,
    out_dir: Path,
    after_step: Callable[[RampStep], Any] | None = None,
    *,
    p95_limit_ms: float = CLICK_P95_LIMIT_MS,
    variables: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Constant-rate steps of growing rate until one is not held (twice: the machine is shared and
    noisy), then one step halfway between the last held rate and the first one missed. If the first
    rate is not held, the steps go down instead. Each step records the CPU time the serving process
    used per request, a figure that noise on a shared machine disturbs less than latency.
    `variables` go to k6-tests/ramp.js as well (FLOW=register ramps registrations, not clicks)."""
    steps: list[dict[str, Any]] = []

    async def step(rate: int) -> bool:
        cpu_before = cpu_seconds(pid)
        run = await run_k6(
            RAMP_SCRIPT,
            {
                "TARGET_URL": url,
                "RATE": str(rate),
                "DURATION_S": str(step_s),
                "P95_LIMIT_MS": str(p95_limit_ms),
                **(variables or {}),
            },
            out_dir / f"ramp-{name}-{rate}",
            timeout_s=step_s + 60,
        )
        if run.summary is None:
            raise RuntimeError(f"the click ramp at {rate}/s wrote no summary:\n{run.output}")
        result = RampStep.from_summary(run.summary)
        held = result.held(p95_limit_ms)
        entry = {**run.summary, "held": held}
        if after_step is not None:
            entry.update(await after_step(result) or {})  # e.g. wait for the consumer to catch up
        entry["cpu_us_per_request"] = (
            round((cpu_seconds(pid) - cpu_before) * 1e6 / result.requests) if result.requests else None
        )
        steps.append(entry)
        say(
            f"{name} {rate}/s: {'held' if held else 'NOT held'} (P95 {fmt(result.p95_ms)} ms, "
            f"{result.achieved_rate:.0f}/s answered, failed {result.failed_requests}, "
            f"dropped {result.dropped_iterations}, {entry['cpu_us_per_request']} us CPU per request)"
        )
        return held

    async def holds(rate: int) -> bool:
        return await step(rate) or await step(rate)

    last_held = 0
    missed = None
    if await holds(rates[0]):
        last_held = rates[0]
        for rate in rates[1:]:
            if not await holds(rate):
                missed = rate
                break
            last_held = rate
    else:
        missed = rates[0]
        factor = rates[1] / rates[0] if len(rates) > 1 else 1.5
        rate = round(rates[0] / factor)
        while rate >= MIN_RAMP_RATE:
            if await holds(rate):
                last_held = rate
                break
            missed, rate = rate, round(rate / factor)
    if missed is not None and last_held and missed - last_held > 0.05 * last_held:
        await step(round((last_held + missed) / 2))
    return steps


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@contextlib.asynccontextmanager
async def bare_endpoint(log_path: Path) -> AsyncIterator[tuple[str, int]]:
    """bench/bare.py under the services' own uvicorn command line, on a free port."""
    port = free_port()
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "uvicorn"),
            "bench.bare:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "15",
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def answers() -> bool:
                if process.returncode is not None:
                    raise RuntimeError(f"the bare endpoint exited; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.post(f"{url}/track_click", json={"user_id": 1, "page": "warm-up"})
                    return response.status_code == 200
                return False

            if await wait_until(answers, 30) is None:
                raise RuntimeError(f"the bare endpoint did not answer; see {log_path}")
        yield url, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


# --- the default profile, with its cost ledger -----------------------------------------------------


def process_groups(fleet: Fleet, bare_pid: int) -> list[ProcessGroup]:
    groups = [ProcessGroup(spec.name, lambda name=spec.name: [fleet.pid(name)]) for spec in SERVICES]
    return [
        *groups,
        ProcessGroup("report workers", lambda: fleet.worker_processes("reportservice")),
        ProcessGroup("rabbitmq", lambda: processes_named(RABBITMQ_COMMANDS), include_reaped=True),
        ProcessGroup("postgresql", lambda: processes_named(POSTGRES_COMMANDS), include_reaped=True),
        ProcessGroup("bare endpoint", lambda: [bare_pid]),
    ]


def children_cpu_s() -> float:
    """CPU time of this process's children that exited and were waited for (the k6 runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def transaction_counts(infra: Infra) -> dict[str, float]:
    connection = await asyncpg.connect(admin_dsn(infra.database_url))
    try:
        row = await connection.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", infra.database
        )
    finally:
        await connection.close()
    return {"committed": float(row["xact_commit"]), "rolled_back": float(row["xact_rollback"])}


async def queues_drained(http: httpx.AsyncClient, infra: Infra) -> bool:
    response = await http.get(
        f"{infra.management_url}/api/queues/{infra.vhost}",
        params={"columns": "name,messages"},
        auth=credentials_of(infra.rabbitmq_url),
    )
    response.raise_for_status()
    return all(queue.get("messages", 0) == 0 for queue in response.json() if not queue["name"].endswith(".dlq"))


def accepts_of(samples: Path) -> list[Accept]:
    """The accept requests in a k6 CSV output (timestamps in milliseconds, taken when a request ended)."""
    ended: list[tuple[float, str, float]] = []
    with gzip.open(samples, "rt", newline="") as lines:
        for row in csv.DictReader(lines):
            if row["metric_name"] != "http_req_duration":  # most rows: the other metrics of each request
                continue
            tags = dict(pair.split("=", 1) for pair in row["extra_tags"].split("&") if "=" in pair)
            if tags.get("kind") == "accept":
                duration_ms = float(row["metric_value"])
                ended.append((float(row["timestamp"]) - duration_ms, tags["flow"], duration_ms))
    if not ended:
        return []
    first_sent = min(sent for sent, _, _ in ended)
    return [Accept((sent - first_sent) / 1000, flow, duration_ms) for sent, flow, duration_ms in ended]


async def default_profile(
    http: httpx.AsyncClient,
    fleet: Fleet,
    infra: Infra,
    bare: tuple[str, int],
    name: str,
    arguments: argparse.Namespace,
) -> dict[str, Any]:
    """k6's default profile against the fleet, the bare endpoint at a steady BARE_RATE beside it, and the
    ledger of that window: from just before k6 starts until the queues drained and PostgreSQL's
    statistics settled (the fleet's idle work in those seconds counts too: it is the fleet's cost)."""
    bare_url, bare_pid = bare
    groups = process_groups(fleet, bare_pid)
    idle_before = read_cpu(groups)
    await asyncio.sleep(STATISTICS_SETTLE_S)  # also lets the last run's statistics reach pg_stat_database
    idle = cpu_used(idle_before, read_cpu(groups))
    before_metrics = await scrape(http, fleet)
    before_transactions = await transaction_counts(infra)
    before_cpu, before_wait = read_cpu(groups), read_cpu_wait(groups)
    before_children = children_cpu_s()
    started = time.monotonic()
    run_dir = ARTIFACTS / arguments.run_dir
    samples = run_dir / f"k6-{name}-samples.csv.gz"
    default, bare_run = await asyncio.gather(
        run_k6(
            FLEET_SCRIPT,
            {"PROFILE": "default", "POLL_INTERVAL_S": str(arguments.poll_interval), **service_urls(fleet)},
            run_dir / f"k6-{name}",
            timeout_s=300,
            outputs=[f"csv=fileName={samples},timeFormat=unix_milli"],
        ),
        run_k6(
            RAMP_SCRIPT,
            {"TARGET_URL": bare_url, "RATE": str(BARE_RATE), "DURATION_S": "30", "P95_LIMIT_MS": "1000"},
            run_dir / f"k6-{name}-bare",
            timeout_s=120,
        ),
    )
    k6_cpu_s = children_cpu_s() - before_children  # both k6 processes have exited and were waited for
    await asyncio.sleep(2)  # the last saga steps and deliveries
    after_metrics = await scrape(http, fleet)
    await wait_until(lambda: queues_drained(http, infra), 60)
    await asyncio.sleep(STATISTICS_SETTLE_S)
    after_cpu, after_wait = read_cpu(groups), read_cpu_wait(groups)
    window_s = time.monotonic() - started
    after_transactions = await transaction_counts(infra)
    if default.summary is None:
        raise RuntimeError(f"k6's default profile wrote no summary:\n{default.output}")
    if bare_run.summary is None:
        raise RuntimeError(f"k6 against the bare endpoint wrote no summary:\n{bare_run.output}")
    print(default.output, flush=True)
    cpu = cpu_used(before_cpu, after_cpu)
    cpu["k6"] = round(k6_cpu_s, 3)
    ledger = build_ledger(
        cpu_s=cpu,
        services=[spec.name for spec in SERVICES],
        requests=k6_request_counts(default.summary),
        message_counts=messages(before_metrics, after_metrics),
        transactions={key: after_transactions[key] - before_transactions[key] for key in after_transactions},
        bare_requests=float(bare_run.summary["requests"]),
        window_s=window_s,
    )
    ledger["cpu_wait_s"] = cpu_used(before_wait, after_wait)
    ledger["idle_cpu_s_per_s"] = {group: round(value / STATISTICS_SETTLE_S, 4) for group, value in idle.items()}
    say(
        f"{name}: fleet CPU {ledger['fleet_cpu_ms_per_request']} ms per request, "
        f"{ledger['multiple_of_bare']}x the bare endpoint's {ledger['bare_cpu_ms_per_request']} ms"
    )
    profile = {
        key: default.summary[key]
        for key in (
            "accept_latency",
            "checks",
            "http_req_failed_rate",
            "dropped_iterations",
            "deadline_misses",
            "completion_ms",
            "thresholds_failed",
        )
    }
    profile["exit_code"] = default.exit_code
    profile["start_burst"] = start_burst(accepts_of(samples), START_BURST_S, ACCEPT_SLOW_MS)
    return {
        "profile": profile,
        "ledger": ledger,
        "end_to_end": end_to_end_by_queue(before_metrics, after_metrics),
        "saga_duration": saga_durations(before_metrics, after_metrics),
    }


# --- the whole run -------------------------------------------------------------------------------


async def measure(arguments: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    arguments.run_dir = f"bench-{started.strftime('%Y%m%d-%H%M%S')}"
    run_dir = ARTIFACTS / arguments.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "load_average": {"start": load_average()},
        "settings": {
            "step_s": arguments.step_seconds,
            "poll_interval_s": arguments.poll_interval,
            "click_p95_limit_ms": CLICK_P95_LIMIT_MS,
            "bare_rate": BARE_RATE,
        },
        "artifacts": str(run_dir.relative_to(ROOT)),
    }
    rates = ramp_rates(arguments.ramp_start, arguments.ramp_factor, arguments.ramp_max)
    say(f"artifacts in {run_dir}; load average {results['load_average']['start']}")

    async with (
        isolated_infra() as infra,
        httpx.AsyncClient(timeout=10.0) as http,
        bare_endpoint(run_dir / "bare.log") as bare,
    ):
        results["machine"].update(await dependency_versions(infra))
        fleet = Fleet(infra, run_dir / "logs")
        try:
            say("starting the fleet")
            await fleet.start()
            await warm_up(http, fleet)
            await asyncio.sleep(3)  # let the warm-up's messages settle
            results["memory_idle"] = memory_of(fleet)
            peak = PeakMemory(fleet)
            results["delays"] = {
                queue: {"setting": name, "value": value} for queue, (name, value) in simulated_delays().items()
            }
            results["saga_payment_delay_s"] = simulated_delays()["stock_reserved_queue"][1]

            async with peak.sampling():
                say(f"default profile (k6-tests/script-async.js, PROFILE=default), bare endpoint at {BARE_RATE}/s")
                measured = await default_profile(http, fleet, infra, bare, "default", arguments)
                results["load_average"]["after_default"] = load_average()
                results["default_profile"] = measured["profile"]
                results["ledger"] = measured["ledger"]
                results["end_to_end"] = measured["end_to_end"]
                results["saga_duration"] = measured["saga_duration"]

                if not arguments.skip_ab:
                    say(f"the same profile, reports near free (REPORT_CPU_SECONDS={NEAR_FREE_REPORT_CPU_S})")
                    async with fleet.reconfigured("reportservice", {"REPORT_CPU_SECONDS": NEAR_FREE_REPORT_CPU_S}):
                        await warm_up(http, fleet)
                        near_free = await default_profile(http, fleet, infra, bare, "reports-near-free", arguments)
                    results["reports_near_free"] = {
                        "report_cpu_seconds": float(NEAR_FREE_REPORT_CPU_S),
                        "default_profile": near_free["profile"],
                        "ledger": near_free["ledger"],
                    }

                if not arguments.skip_ramp:
                    clicks_sent = await clicks_counted(http, fleet)

                    async def drain(step: RampStep) -> dict[str, Any]:
                        nonlocal clicks_sent
                        clicks_sent += step.requests - step.failed_requests

                        async def counted() -> bool:
                            return await clicks_counted(http, fleet) >= clicks_sent

                        return {"backlog_drained_after_s": await wait_until(counted, 120)}

                    say(f"click ramp against analyticsservice: {rates[0]}/s x{arguments.ramp_factor} ...")
                    fleet_steps = await ramp(
                        "fleet",
                        fleet.url("analyticsservice"),
                        fleet.pid("analyticsservice"),
                        rates,
                        arguments.step_seconds,
                        run_dir,
                        drain,
                    )
            results["memory_load"] = peak.peak
            results["load_average"]["after_fleet_ramp"] = load_average()
        finally:
            say("stopping the fleet")
            await fleet.close()

        if not arguments.skip_ramp:
            say("click ramp against the bare endpoint (bench/bare.py)")
            bare_url, bare_pid = bare
            bare_steps = await ramp("bare", bare_url, bare_pid, rates, arguments.step_seconds, run_dir)
            fleet_rate = max((step["target_rate"] for step in fleet_steps if step["held"]), default=0)
            bare_rate = max((step["target_rate"] for step in bare_steps if step["held"]), default=0)
            results["click_ramp"] = {
                "fleet": {"held_rate": fleet_rate, "steps": fleet_steps},
                "bare": {"held_rate": bare_rate, "steps": bare_steps},
                "ratio": round(fleet_rate / bare_rate, 3) if bare_rate else None,
            }
    results["load_average"]["end"] = load_average()
    results["duration_s"] = round((datetime.now(UTC) - started).total_seconds())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "bench", help="where the report goes")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README to update ('' for none)")
    parser.add_argument("--step-seconds", type=int, default=8, help="length of each ramp step")
    parser.add_argument("--ramp-start", type=float, default=250, help="first click rate (per second)")
    parser.add_argument("--ramp-factor", type=float, default=1.3, help="growth from one step to the next")
    parser.add_argument("--ramp-max", type=float, default=8000, help="highest click rate tried")
    parser.add_argument(
        "--poll-interval", type=float, default=0.25, help="k6's status polling interval (s; the script's default)"
    )
    parser.add_argument("--skip-ramp", action="store_true", help="no click ramps (a quicker look at the ledger)")
    parser.add_argument("--skip-ab", action="store_true", help="no second default profile with reports near free")
    parser.add_argument(
        "--render-only", action="store_true", help="measure nothing: render the report again from results.json"
    )
    arguments = parser.parse_args()

    results_path = arguments.output / "results.json"
    if arguments.render_only:
        results = json.loads(results_path.read_text())
    else:
        results = asyncio.run(measure(arguments))
        arguments.output.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    written = render_outputs(results, arguments.output, Path(arguments.readme) if arguments.readme else None)
    say(
        "wrote "
        + ", ".join(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path) for path in written)
    )


if __name__ == "__main__":
    main()
