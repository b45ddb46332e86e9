"""The cost ledger: where the machine's CPU goes while the fleet takes the default profile.

CPU is counted, not timed: user plus system time from `/proc/<pid>/stat`, which CPU steal and other
tenants of a shared machine disturb far less than latency. Over one k6 run the ledger reads, per
group of processes, the CPU they used (each service's own process, the report workers, RabbitMQ,
PostgreSQL, k6, the bare endpoint), and from the services' metrics and PostgreSQL's statistics the
messages published and delivered and the transactions committed. Beside the CPU each group used it
reads how long the group's threads were ready to run but waited for a core (`/proc/<pid>/task/*/schedstat`):
on two cores shared by a dozen processes, that queueing is where a request's time goes when it is not
spent computing. The unit it divides by is a bare
FastAPI endpoint (bench/bare.py) taking a steady rate beside the load in the same run: what one
request costs this machine, at this moment, with nothing behind it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

CLICK_EVENT = "ClicksTracked"
CLICK_QUEUE = "click_tracked_queue"
RABBITMQ_COMMANDS = frozenset({"beam.smp", "erl_child_setup", "epmd", "inet_gethost"})
POSTGRES_COMMANDS = frozenset({"postgres"})


@dataclass(frozen=True, slots=True)
class ProcessTimes:
    command: str
    parent: int
    own_s: float  # utime + stime
    reaped_children_s: float  # cutime + cstime: children that exited and were waited for


def process_times(pid: int) -> ProcessTimes | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # gone
    command = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ProcessTimes(
        command=command,
        parent=int(fields[1]),
        own_s=(int(fields[11]) + int(fields[12])) / tick,
        reaped_children_s=(int(fields[13]) + int(fields[14])) / tick,
    )


def processes_named(commands: Iterable[str]) -> list[int]:
    """Every process whose command (as `/proc/<pid>/stat` gives it) is one of `commands`."""
    wanted = frozenset(commands)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            times = process_times(int(entry.name))
            if times is not None and times.command in wanted:
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class ProcessGroup:
    """A named set of processes, looked up again at every reading (backends and workers come and go).
    With `include_reaped`, the group's roots (members whose parent is not a member) also count the CPU
    of children that exited meanwhile: PostgreSQL's postmaster reaps its short-lived backends."""

    name: str
    pids: Callable[[], Iterable[int]]
    include_reaped: bool = False


Reading = dict[str, dict[int, float]]


def read_cpu(groups: Iterable[ProcessGroup]) -> Reading:
    reading: Reading = {}
    for group in groups:
        times = {pid: found for pid in set(group.pids()) if (found := process_times(pid)) is not None}
        reading[group.name] = {}
        for pid, found in times.items():
            total = found.own_s
            if group.include_reaped and found.parent not in times:
                total += found.reaped_children_s
            reading[group.name][pid] = total
    return reading


def run_queue_wait_s(pid: int) -> float | None:
    """Seconds the threads of `pid` alive now spent runnable but waiting for a CPU (the kernel's
    schedstat: time on a CPU, time on a run queue, time slices, in nanoseconds)."""
    total_ns = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None  # gone
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total_ns / 1e9


def read_cpu_wait(groups: Iterable[ProcessGroup]) -> Reading:
    """Like `read_cpu`, the run-queue wait of each group's processes (exited ones are not counted)."""
    return {
        group.name: {pid: found for pid in set(group.pids()) if (found := run_queue_wait_s(pid)) is not None}
        for group in groups
    }


def cpu_used(before: Reading, after: Reading) -> dict[str, float]:
    """CPU seconds each group used between two readings. A process that appeared meanwhile counts in
    full; one that exited meanwhile is lost, unless a root of its group reaped it."""
    used = {}
    for name, processes in after.items():
        earlier = before.get(name, {})
        used[name] = round(sum(max(0.0, total - earlier.get(pid, 0.0)) for pid, total in processes.items()), 3)
    return used


# --- counters from the services' /metrics ---------------------------------------------------------


def counter_total(metrics_text: str, name: str, keep: Callable[[Mapping[str, str]], bool]) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and keep(sample.labels):
                total += sample.value
    return total


def messages(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, float]:
    """Messages the services published (confirmed by the broker) and took off their queues (every
    delivery, whatever its outcome), split into clicks and the rest."""

    def delta(name: str, keep: Callable[[Mapping[str, str]], bool]) -> float:
        return sum(
            counter_total(text, name, keep) - counter_total(before.get(service, ""), name, keep)
            for service, text in after.items()
        )

    def confirmed(clicks: bool) -> Callable[[Mapping[str, str]], bool]:
        return lambda labels: labels["outcome"] == "confirmed" and (labels["event_type"] == CLICK_EVENT) == clicks

    def consumed(clicks: bool) -> Callable[[Mapping[str, str]], bool]:
        return lambda labels: (labels["queue"] == CLICK_QUEUE) == clicks

    return {
        "published_clicks": delta("messages_published_total", confirmed(True)),
        "published_other": delta("messages_published_total", confirmed(False)),
        "delivered_clicks": delta("messages_consumed_total", consumed(True)),
        "delivered_other": delta("messages_consumed_total", consumed(False)),
    }


# --- the ledger -----------------------------------------------------------------------------------


def per(value: float, count: float, digits: int = 2) -> float | None:
    return round(value / count, digits) if count else None


def build_ledger(
    *,
    cpu_s: Mapping[str, float],
    services: Iterable[str],
    requests: Mapping[str, float],
    message_counts: Mapping[str, float],
    transactions: Mapping[str, float],
    bare_requests: float,
    window_s: float,
) -> dict[str, Any]:
    """The figures `make bench` prints: fleet CPU per request (the services, RabbitMQ and PostgreSQL;
    report hashing and the load generator left out) and its multiple of the bare endpoint's."""
    services = list(services)
    fleet_s = sum(cpu_s[name] for name in services) + cpu_s["rabbitmq"] + cpu_s["postgresql"]
    total_requests = requests["total"]
    accepted = requests["accepted"]
    accepted_other = accepted - requests["accepted_clicks"]
    fleet_ms = per(fleet_s * 1000, total_requests, 3)
    bare_ms = per(cpu_s["bare endpoint"] * 1000, bare_requests, 3)
    published = message_counts["published_clicks"] + message_counts["published_other"]
    delivered = message_counts["delivered_clicks"] + message_counts["delivered_other"]
    return {
        "window_s": round(window_s, 1),
        "cpu_s": dict(cpu_s),
        "fleet_cpu_s": round(fleet_s, 2),
        "requests": dict(requests),
        "bare_requests": bare_requests,
        "messages": dict(message_counts),
        "transactions": dict(transactions),
        "fleet_cpu_ms_per_request": fleet_ms,
        "bare_cpu_ms_per_request": bare_ms,
        "multiple_of_bare": per(fleet_ms or 0.0, bare_ms or 0.0, 1) if fleet_ms and bare_ms else None,
        "per_accepted_request": {
            "published": per(published, accepted),
            "delivered": per(delivered, accepted),
            "committed": per(transactions["committed"], accepted),
        },
        "per_accepted_non_click_request": {
            "published": per(message_counts["published_other"], accepted_other),
            "delivered": per(message_counts["delivered_other"], accepted_other),
        },
    }


def k6_request_counts(summary: Mapping[str, Any]) -> dict[str, float]:
    """Every HTTP request k6 made (accepts and status polls), and the accepted ones."""
    metrics = summary.get("metrics", {})
    total = float(metrics.get("http_reqs", {}).get("values", {}).get("count", 0))
    rows = summary.get("accept_latency", [])
    return {
        "total": total,
        "accepted": float(sum(row["accepted"] for row in rows)),
        "accepted_clicks": float(sum(row["accepted"] for row in rows if row["flow"] == "click")),
    }
