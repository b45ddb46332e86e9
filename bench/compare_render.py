"""`make compare`'s report: docs/compare/results.md, docs/compare/compare.png and README.md's comparison block."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.render import SCENARIOS, _table, machine_line, ms

README_START = "<!-- compare:start -->"
README_END = "<!-- compare:end -->"
CHART = "compare.png"
# What the design document promised the asynchronous fleet would buy (sync P95 / async P95).
PROMISED_RATIO = {"register": 5, "payment": 20, "product_update": 3, "report": 100, "click": 10}
# Scenarios whose outcome the asynchronous fleet delivers later (seen by polling): completion figures.
COMPLETION = {"payment": "payment", "report": "report", "order": "order"}


def _rows_by_flow(fleet: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {row["flow"]: row for row in fleet["profile"]["accept_latency"]}


def ratio(slow: float | None, fast: float | None) -> str:
    if slow is None or fast is None or fast <= 0:
        return "-"
    return f"{slow / fast:.1f}x"


def latency_section(results: Mapping[str, Any], level: str) -> list[str]:
    fleets = results["fleets"]
    asynchronous, synchronous = _rows_by_flow(fleets["async"]), _rows_by_flow(fleets["sync"])
    rows = []
    for flow, (number, request) in SCENARIOS.items():
        a, s = asynchronous.get(flow, {}), synchronous.get(flow, {})
        promised = PROMISED_RATIO.get(flow)
        rows.append(
            [
                f"{number} `{request}`",
                ms(a.get("p95_ms")),
                ms(a.get("p99_ms")),
                ms(s.get("p95_ms")),
                ms(s.get("p99_ms")),
                ratio(s.get("p95_ms"), a.get("p95_ms")),
                f"{promised}x" if promised else "-",
            ]
        )
    completion_rows = []
    for flow, key in COMPLETION.items():
        done = (fleets["async"]["profile"]["completion_ms"] or {}).get(key) or {}
        sync_row = synchronous.get(flow, {})
        completion_rows.append(
            [
                f"{SCENARIOS[flow][0]} {flow}",
                ms(done.get("p(95)")),
                ms(sync_row.get("p95_ms")),
            ]
        )
    profile = results["settings"]["k6_profile"]
    return [
        f"{level} Latency under the same load",
        "",
        f"k6's `{profile}` profile (k6-tests/script-async.js, `MODE=async` and `MODE=sync`), the design document's "
        "delays (email 0.5 s, payment 2 s, report 10 s of CPU). Asynchronous: the time to accept the request; "
        "synchronous: the time to the outcome, which is when its answer comes. Milliseconds.",
        "",
        *_table(
            ["Scenario", "async P95", "async P99", "sync P95", "sync P99", "sync / async (P95)", "design doc's claim"],
            rows,
        ),
        "",
        "When the outcome is known (the asynchronous fleet's, seen by polling every 0.25 s), P95 in ms:",
        "",
        *_table(["Scenario", "async: accept to outcome", "sync: request to answer"], completion_rows),
    ]


def capacity_section(results: Mapping[str, Any], level: str) -> list[str]:
    fleets = results["fleets"]
    rows = []
    for flow, name in (("register", "Registrations"), ("click", "Clicks")):
        a, s = fleets["async"]["ramps"][flow], fleets["sync"]["ramps"][flow]
        rows.append(
            [
                f"{name} (P95 < {a['p95_limit_ms']:.0f} ms, no errors)",
                f"{a['held_rate']:,.0f}/s",
                f"{s['held_rate']:,.0f}/s",
                ratio(a["held_rate"], s["held_rate"]),
            ]
        )
    cost_rows = [
        [
            "CPU, s: the services, PostgreSQL and (async) RabbitMQ",
            f"{fleets['async']['profile']['fleet_cpu_s']:.1f}",
            f"{fleets['sync']['profile']['fleet_cpu_s']:.1f}",
        ],
        [
            "CPU, s: the report workers",
            f"{fleets['async']['profile']['report_workers_cpu_s']:.1f}",
            f"{fleets['sync']['profile']['report_workers_cpu_s']:.1f}",
        ],
        [
            "Requests accepted (status polls not counted)",
            str(fleets["async"]["profile"]["requests"]),
            str(fleets["sync"]["profile"]["requests"]),
        ],
        [
            "CPU per accepted request, ms (workers apart; async: the polls' cost included)",
            ms(fleets["async"]["profile"]["cpu_ms_per_request"]),
            ms(fleets["sync"]["profile"]["cpu_ms_per_request"]),
        ],
        [
            "Failed requests / failed checks",
            _failures(fleets["async"]),
            _failures(fleets["sync"]),
        ],
        [
            "Peak memory, MB (every process)",
            f"{fleets['async']['memory_peak_mb']:.0f}",
            f"{fleets['sync']['memory_peak_mb']:.0f}",
        ],
    ]
    return [
        f"{level} Highest rate held",
        "",
        f"Constant arrival rates of {results['settings']['step_s']} s each (k6-tests/ramp.js), growing until a rate is "
        "not held twice. A synchronous registration includes the email server's 0.5 s, hence its limit.",
        "",
        *_table(["", "async", "sync", "async / sync"], rows),
        "",
        f"{level} Cost",
        "",
        *_table(["Over the load profile", "async", "sync"], cost_rows),
    ]


def _failures(fleet: Mapping[str, Any]) -> str:
    rows = fleet["profile"]["accept_latency"]
    return f"{sum(row['failed_requests'] for row in rows)} / {sum(row['checks_failed'] for row in rows)}"


def _statuses(phase: Mapping[str, Any]) -> str:
    statuses = phase["statuses"]
    if not statuses:
        return "-"
    return ", ".join(f"{count} x {'no answer' if status == '0' else status}" for status, count in statuses.items())


def resilience_section(results: Mapping[str, Any], level: str) -> list[str]:
    fleets = results["fleets"]
    a, s = fleets["async"]["resilience"], fleets["sync"]["resilience"]
    rows = [
        [
            f"Answers before (P95 {ms(a['phases']['before']['p95_ms'])} / {ms(s['phases']['before']['p95_ms'])} ms)",
            _statuses(a["phases"]["before"]),
            _statuses(s["phases"]["before"]),
        ],
        [
            f"Answers while emailservice was down (P95 {ms(a['phases']['during']['p95_ms'])} / "
            f"{ms(s['phases']['during']['p95_ms'])} ms)",
            _statuses(a["phases"]["during"]),
            _statuses(s["phases"]["during"]),
        ],
        [
            f"Answers after (P95 {ms(a['phases']['after']['p95_ms'])} / {ms(s['phases']['after']['p95_ms'])} ms)",
            _statuses(a["phases"]["after"]),
            _statuses(s["phases"]["after"]),
        ],
        ["Registrations accepted", str(a["accepted"]), str(s["accepted"])],
        ["Users stored (accepted or not)", str(a["users_registered"]), str(s["users_registered"])],
        ["Welcome emails delivered in the end", str(a["welcome_emails_delivered"]), str(s["welcome_emails_delivered"])],
    ]
    outage = results["settings"]["outage_s"]
    return [
        f"{level} Resilience: the email service stopped for {outage:.0f} s",
        "",
        f"{a['clients']} clients register a user every 0.2 s each "
        f"for {results['settings']['resilience_s']:.0f} s; emailservice is stopped (SIGTERM) after "
        f"{a['email_down_from_s']:.0f} s and started again. The asynchronous fleet keeps accepting and delivers the "
        "queued emails once the service is back; the synchronous one refuses while it is down, and the users it "
        "stored before the call failed never get their email.",
        "",
        *_table(["", "async", "sync"], rows),
    ]


def report_body(results: Mapping[str, Any], level: str, chart_path: str) -> list[str]:
    return [
        f"Measured {results['date']} by `make compare`{' (short profile)' if results.get('short') else ''}, "
        f"{results['duration_s'] // 60} min: {machine_line(results)} Both fleets ran the same code (`FLEET_MODE`), "
        "one after the other, on the same machine; artifacts in `" + results["artifacts"] + "`.",
        "",
        f"![sync vs async]({chart_path})",
        "",
        *latency_section(results, level),
        "",
        *capacity_section(results, level),
        "",
        *resilience_section(results, level),
    ]


def render_markdown(results: Mapping[str, Any]) -> str:
    return "\n".join(
        ["# The asynchronous fleet against the synchronous one", "", *report_body(results, "##", CHART), ""]
    )


def update_readme(readme: str, section: str) -> str:
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"README.md has no {README_START} ... {README_END} block for the comparison")
    return pattern.sub(lambda _: f"{README_START}\n{section}\n{README_END}", readme)


def render_chart(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = results["fleets"]
    figure, (latency_axes, rate_axes) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    flows = list(SCENARIOS)
    width = 0.38
    for offset, (mode, colour) in enumerate((("async", "tab:blue"), ("sync", "tab:orange"))):
        rows = _rows_by_flow(fleets[mode])
        values = [(rows.get(flow, {}).get("p95_ms") or 0.1) for flow in flows]
        positions = [index + (offset - 0.5) * width for index in range(len(flows))]
        bars = latency_axes.bar(positions, values, width, label=f"{mode} P95", color=colour)
        latency_axes.bar_label(bars, labels=[f"{value:.0f}" for value in values], fontsize=7, padding=1)
    latency_axes.set_xticks(range(len(flows)), [f"{SCENARIOS[flow][0]} {flow}" for flow in flows], fontsize=8)
    latency_axes.set_yscale("log")
    latency_axes.set_ylabel("P95, ms (log scale)")
    latency_axes.set_title("Same load: async accept vs sync answer", fontsize=10)
    latency_axes.legend(fontsize=8)

    labels = ["registrations/s", "clicks/s"]
    for offset, (mode, colour) in enumerate((("async", "tab:blue"), ("sync", "tab:orange"))):
        values = [fleets[mode]["ramps"][flow]["held_rate"] for flow in ("register", "click")]
        positions = [index + (offset - 0.5) * width for index in range(2)]
        bars = rate_axes.bar(positions, values, width, label=mode, color=colour)
        rate_axes.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8, padding=1)
    rate_axes.set_xticks(range(2), labels, fontsize=8)
    rate_axes.set_title("Highest rate held (P95 limit, no errors)", fontsize=10)
    rate_axes.legend(fontsize=8)
    figure.suptitle(
        f"make compare, {results['date']}: {results['machine']['cpu']}, {results['machine']['cores']} cores",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def vacuous_series(results: Mapping[str, Any]) -> list[str]:
    """What makes the comparison empty or meaningless: a scenario with no successful request or no latency,
    errors or failed checks, a ramp that never held, a resilience phase without requests."""
    problems = []
    for mode, fleet in results["fleets"].items():
        for row in fleet["profile"]["accept_latency"]:
            if not row["accepted"] or row["p95_ms"] is None:
                problems.append(f"{mode} {row['flow']}: no successful request")
            if row["failed_requests"] or row["checks_failed"]:
                failures = f"{row['failed_requests']} failed requests, {row['checks_failed']} failed checks"
                problems.append(f"{mode} {row['flow']}: {failures}")
        if not fleet["profile"]["fleet_cpu_s"]:
            problems.append(f"{mode}: no CPU time measured")
        for flow, ramp in fleet["ramps"].items():
            if not ramp["held_rate"]:
                problems.append(f"{mode} {flow} ramp: no rate held")
        for phase, figures in fleet["resilience"]["phases"].items():
            if not figures["requests"]:
                problems.append(f"{mode} resilience: no request {phase} the outage")
    return problems


def render_comparison(results: Mapping[str, Any], output: Path, readme: Path | None) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    chart = output / CHART
    render_chart(results, chart)
    markdown = output / "results.md"
    markdown.write_text(render_markdown(results))
    written: list[Path] = [output / "results.json", markdown, chart]
    if readme is not None:
        relative_chart = chart.relative_to(readme.parent) if chart.is_relative_to(readme.parent) else chart
        readme.write_text(
            update_readme(readme.read_text(), "\n".join(report_body(results, "###", str(relative_chart))))
        )
        written.append(readme)
    return written
