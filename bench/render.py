"""The benchmark's report: docs/bench/results.md, docs/bench/latency.png and README.md's section."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCENARIOS = {
    "register": ("1", "POST /register"),
    "payment": ("2", "POST /process_payment"),
    "product_update": ("3", "PUT /products/{id}"),
    "report": ("4", "POST /generate_report"),
    "order": ("5", "POST /create_order"),
    "click": ("6", "POST /track_click"),
}
# The targets (reported, never asserted: this machine is shared and noisy).
ACCEPT_P95_TARGET_MS = 15.0
ACCEPT_P99_TARGET_MS = 50.0
CLICK_RATE_TARGET = 2000
CLICK_RATIO_TARGET = 0.6
END_TO_END_P95_TARGET_MS = 50.0
SAGA_MARGIN_MS = 300.0
RSS_TARGET_MB = 150.0
CPU_MULTIPLE_TARGET = 7.0
REPORT_COST_RATIO_TARGET = 1.2

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
CHART = "latency.png"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def quantile_ms(figures: Mapping[str, Any], key: str) -> str:
    """A histogram quantile; one beyond the highest bucket is shown as a lower limit."""
    value = ms(figures.get(f"{key}_ms"))
    return f"> {value}" if figures.get(f"{key}_beyond_range") else value


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def machine_line(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    load = results["load_average"]
    parts = [
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM, {machine['os']}",
        f"Python {machine['python']}",
    ]
    if "rabbitmq" in machine:
        parts.append(f"RabbitMQ {machine['rabbitmq']}")
    if "postgresql" in machine:
        parts.append(f"PostgreSQL {machine['postgresql']}")
    loads = ", ".join(f"{moment.replace('_', ' ')} {' / '.join(map(str, values))}" for moment, values in load.items())
    return f"{'; '.join(parts)}. Load average (1/5/15 min): {loads}."


def accept_section(results: Mapping[str, Any], level: str) -> list[str]:
    default = results["default_profile"]
    burst = default.get("start_burst")  # results of an older bench have none
    rows = []
    for row in default["accept_latency"]:
        number, endpoint = SCENARIOS[row["flow"]]
        ok = (
            row["p95_ms"] is not None
            and row["p95_ms"] <= ACCEPT_P95_TARGET_MS
            and row["p99_ms"] <= ACCEPT_P99_TARGET_MS
            and row["checks_failed"] == 0
            and row["failed_requests"] == 0
        )
        rows.append(
            [
                f"{number} {row['flow']}",
                f"`{endpoint}`",
                str(row["accepted"]),
                ms(row["p50_ms"]),
                ms(row["p95_ms"]),
                ms(row["p99_ms"]),
                ms(row["max_ms"]),
                *([ms(burst[row["flow"]]["p95_ms_later"])] if burst else []),
                str(row["failed_requests"]),
                str(row["checks_failed"]),
                verdict(ok),
            ]
        )
    checks = default["checks"] or {"passed": 0, "failed": 0}
    burst_lines = []
    if burst:
        at_start = sum(figures["at_start"] for figures in burst.values())
        slow = sum(figures["at_start_slow"] for figures in burst.values())
        burst_lines = [
            "",
            f"Every virtual user sends its first request in the same instant: {at_start} accepts went out in the "
            f"run's first second, {slow} of them took over {ACCEPT_P95_TARGET_MS:.0f} ms. *P95 after 1 s* leaves "
            "that burst out, to tell it from the steady state; the verdict counts every request.",
        ]
    thresholds = default["thresholds_failed"]
    return [
        f"{level} Accept latency, k6 default profile",
        "",
        "Scenarios 1-5 with 5/5/5/2/5 virtual users for 30 s (1 s think time; orders, reports and one payment in",
        "five polled to their final status), clicks at 100/s, all at once. Latency of the request a user waits",
        "on; status polls are tagged apart and not counted.",
        "",
        *_table(
            [
                "Scenario",
                "Endpoint",
                "Requests",
                "P50 ms",
                "P95 ms",
                "P99 ms",
                "Max ms",
                *(["P95 after 1 s"] if burst else []),
                "Failed requests",
                "Failed checks",
                f"P95 <= {ACCEPT_P95_TARGET_MS:.0f}, P99 <= {ACCEPT_P99_TARGET_MS:.0f}",
            ],
            rows,
        ),
        *burst_lines,
        "",
        f"Checks: {checks['passed']} passed, {checks['failed']} failed; dropped arrivals: "
        f"{default['dropped_iterations']}; completions past their deadline: {default['deadline_misses']}; "
        + ("k6 thresholds: all passed." if not thresholds else f"k6 thresholds failed: {', '.join(thresholds)}."),
    ]


LEDGER_ROWS = (
    ("userservice", "userservice"),
    ("paymentservice", "paymentservice"),
    ("productservice", "productservice"),
    ("reportservice", "reportservice (serving and consuming)"),
    ("orderservice", "orderservice"),
    ("analyticsservice", "analyticsservice"),
    ("emailservice", "emailservice"),
    ("searchservice", "searchservice"),
    ("cacheservice", "cacheservice"),
    ("inventoryservice", "inventoryservice"),
    ("rabbitmq", "RabbitMQ"),
    ("postgresql", "PostgreSQL"),
)
LEFT_OUT_ROWS = (
    ("report workers", "report worker processes (hashing)"),
    ("k6", "k6 (both runs)"),
    ("bare endpoint", "bare endpoint (bench/bare.py)"),
)


def ledger_section(results: Mapping[str, Any], level: str) -> list[str]:
    ledger = results.get("ledger")
    if not ledger:
        return []
    cpu = ledger["cpu_s"]
    fleet = ledger["fleet_cpu_s"]
    waits = ledger.get("cpu_wait_s", {})  # results of runs before it was measured have none

    def waited(key: str) -> str:
        return f"{waits[key]:.2f}" if key in waits else "-"

    rows = [
        [label, f"{cpu[key]:.2f}", f"{cpu[key] / fleet:.0%}" if fleet else "-", waited(key)]
        for key, label in LEDGER_ROWS
    ]
    fleet_wait = sum(waits.get(key, 0.0) for key, _ in LEDGER_ROWS)
    rows.append(["**fleet**", f"**{fleet:.2f}**", "100%", f"**{fleet_wait:.2f}**" if waits else "-"])
    rows += [[f"{label}, not counted", f"{cpu[key]:.2f}", "", waited(key)] for key, label in LEFT_OUT_ROWS]
    requests = ledger["requests"]
    accepted = ledger["per_accepted_request"]
    other = ledger["per_accepted_non_click_request"]
    messages = ledger["messages"]
    multiple = ledger["multiple_of_bare"]
    return [
        f"{level} Cost ledger, k6 default profile",
        "",
        f"CPU time (user + system, from `/proc`) each group of processes used over {ledger['window_s']:.0f} s: from",
        "just before k6 started until the queues had drained and PostgreSQL's statistics settled (the fleet's",
        "idle work in those seconds counts too). The fleet is the ten services, RabbitMQ and PostgreSQL; the",
        "report hashing and the load generator are left out. The unit is the bare endpoint, taking a steady",
        f"{results['settings'].get('bare_rate', 120)} requests/s beside the load in the same run.",
        "*Waited for a CPU*: how long the group's threads were ready to run but no core was free for them",
        "(`/proc/<pid>/task/*/schedstat`); a request that arrives meanwhile waits as long.",
        "",
        *_table(["Process", "CPU s", "Share of the fleet", "Waited for a CPU s"], rows),
        "",
        *_table(
            ["Figure", "Value"],
            [
                [
                    "HTTP requests k6 made (accepts and status polls)",
                    f"{requests['total']:,.0f} ({requests['accepted']:,.0f} accepts, "
                    f"{requests['accepted_clicks']:,.0f} of them clicks)",
                ],
                [
                    "messages published / delivered",
                    f"{messages['published_clicks'] + messages['published_other']:,.0f} / "
                    f"{messages['delivered_clicks'] + messages['delivered_other']:,.0f}",
                ],
                [
                    "per accepted request: published, delivered, transactions committed",
                    f"{accepted['published']}, {accepted['delivered']}, {accepted['committed']}",
                ],
                [
                    "per accepted request of scenarios 1-5: published, delivered",
                    f"{other['published']}, {other['delivered']}",
                ],
                [
                    "transactions committed / rolled back (PostgreSQL's count for the fleet's database)",
                    f"{ledger['transactions']['committed']:,.0f} / {ledger['transactions']['rolled_back']:,.0f}",
                ],
                ["fleet CPU per request", f"{ms(ledger['fleet_cpu_ms_per_request'] or 0)} ms"],
                [
                    "bare endpoint CPU per request",
                    f"{ledger['bare_cpu_ms_per_request']:.3f} ms" if ledger["bare_cpu_ms_per_request"] else "-",
                ],
                [
                    f"fleet per request, multiple of the bare endpoint (<= {CPU_MULTIPLE_TARGET:g}x)",
                    "-" if multiple is None else f"{multiple:.1f}x: {verdict(multiple <= CPU_MULTIPLE_TARGET)}",
                ],
            ],
        ),
    ]


def ab_section(results: Mapping[str, Any], level: str) -> list[str]:
    near_free = results.get("reports_near_free")
    if not near_free:
        return []
    real = {row["flow"]: row for row in results["default_profile"]["accept_latency"]}
    cheap = {row["flow"]: row for row in near_free["default_profile"]["accept_latency"]}
    rows = []
    for flow, (number, endpoint) in SCENARIOS.items():
        with_reports, without = real.get(flow, {}).get("p95_ms"), cheap.get(flow, {}).get("p95_ms")
        ratio = with_reports / without if with_reports and without else None
        rows.append(
            [
                f"{number} {flow}",
                f"`{endpoint}`",
                ms(with_reports),
                ms(without),
                "-" if ratio is None else f"{ratio:.2f}x",
                verdict(None if ratio is None else ratio <= REPORT_COST_RATIO_TARGET),
            ]
        )
    ledger = near_free["ledger"]
    seconds = results.get("delays", {}).get("report_jobs_queue", {}).get("value")
    return [
        f"{level} What report hashing costs the rest: the default profile twice",
        "",
        f"Once with reports at their real cost (REPORT_CPU_SECONDS = {seconds:g}), once at almost none "
        f"({near_free['report_cpu_seconds']:g} s);"
        if seconds is not None
        else "Reports at their real cost, then at almost none;",
        "the workers hash on CPU nothing else wants, so the accept latency of every scenario should not depend on",
        "them. Fleet CPU per request with reports near free: "
        f"{ms(ledger['fleet_cpu_ms_per_request'] or 0)} ms ({ledger['multiple_of_bare']}x the bare endpoint).",
        "",
        *_table(
            [
                "Scenario",
                "Endpoint",
                "P95 ms, real reports",
                "P95 ms, reports near free",
                "Ratio",
                f"<= {REPORT_COST_RATIO_TARGET:g}x",
            ],
            rows,
        ),
    ]


def click_section(results: Mapping[str, Any], level: str) -> list[str]:
    ramp = results["click_ramp"]
    fleet, bare, ratio = ramp["fleet"]["held_rate"], ramp["bare"]["held_rate"], ramp["ratio"]
    step_s = results["settings"]["step_s"]
    lines = [
        f"{level} Scenario 6 ceiling: the click ramp",
        "",
        f"Constant arrival rates of {step_s} s each (k6-tests/ramp.js), growing until a rate is not held twice,",
        "then one step halfway back. Held: every arrival sent, every answer `200 tracked`, P95 < "
        f"{results['settings']['click_p95_limit_ms']:.0f} ms.",
        "The bare endpoint (bench/bare.py) validates the same request body and returns the same answer with",
        "nothing behind it, under the same uvicorn command: this machine's ceiling for one service process.",
        "",
        *_table(
            ["", "Highest rate held", "CPU per request (median of steps)", "Target"],
            [
                [
                    "analyticsservice `POST /track_click`",
                    f"{fleet:,.0f}/s",
                    cpu_per_request(ramp["fleet"]["steps"]),
                    f">= {CLICK_RATE_TARGET:,}/s: {verdict(fleet >= CLICK_RATE_TARGET)}",
                ],
                ["bare FastAPI endpoint", f"{bare:,.0f}/s", cpu_per_request(ramp["bare"]["steps"]), ""],
                [
                    "ratio",
                    "-" if ratio is None else f"{ratio:.0%}",
                    "",
                    f">= {CLICK_RATIO_TARGET:.0%}: {verdict(None if ratio is None else ratio >= CLICK_RATIO_TARGET)}",
                ],
            ],
        ),
        "",
        "CPU per request: the serving process's CPU time over a step's requests; for analyticsservice it includes",
        "counting the clicks (its consumer runs in the same process), which the step waits for.",
        "",
        "<details><summary>Every step</summary>",
        "",
    ]
    step_rows = []
    for name in ("fleet", "bare"):
        for step in ramp[name]["steps"]:
            drained = step.get("backlog_drained_after_s")
            step_rows.append(
                [
                    name,
                    f"{step['target_rate']:,}",
                    f"{step['achieved_rate']:,.0f}",
                    ms(step["p50_ms"]),
                    ms(step["p95_ms"]),
                    ms(step["p99_ms"]),
                    str(step["failed_requests"]),
                    str(step["dropped_iterations"]),
                    "yes" if step["held"] else "no",
                    "-" if step.get("cpu_us_per_request") is None else f"{step['cpu_us_per_request']:,}",
                    "-" if name == "bare" else ("not within 120 s" if drained is None else f"{drained} s"),
                ]
            )
    lines += _table(
        [
            "Target",
            "Rate/s",
            "Answered/s",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "Failed",
            "Dropped",
            "Held",
            "CPU us/request",
            "Clicks all counted after",
        ],
        step_rows,
    )
    return [*lines, "", "</details>"]


def cpu_per_request(steps: Sequence[Mapping[str, Any]]) -> str:
    values = sorted(step["cpu_us_per_request"] for step in steps if step.get("cpu_us_per_request") is not None)
    return "-" if not values else f"{values[len(values) // 2]:,} us"


def end_to_end_section(results: Mapping[str, Any], level: str) -> list[str]:
    delays = results["delays"]
    rows = []
    for queue, figures in results["end_to_end"].items():
        delay = delays.get(queue)
        target_ok = None if delay else (figures["p95_ms"] is not None and figures["p95_ms"] <= END_TO_END_P95_TARGET_MS)
        rows.append(
            [
                f"`{queue}`",
                figures["consumer"],
                f"{delay['setting']} = {delay['value']:g}" if delay else "",
                f"{figures['count']:.0f}",
                quantile_ms(figures, "p50"),
                quantile_ms(figures, "p95"),
                verdict(target_ok),
            ]
        )
    return [
        f"{level} End-to-end latency per queue",
        "",
        "From the publisher handing the message to the broker until its handler committed",
        "(`message_end_to_end_latency_seconds`, quantiles interpolated from the histogram's bucket deltas over",
        "the default profile). Queues whose handler waits on purpose show the setting; the target applies to the",
        "others. Above 1 s the histogram's buckets are 1, 2.5, 5 and 10 s, so figures there are coarse.",
        "",
        *_table(
            [
                "Queue",
                "Consumer",
                "Waits on purpose",
                "Messages",
                "P50 ms",
                "P95 ms",
                f"P95 <= {END_TO_END_P95_TARGET_MS:.0f} ms",
            ],
            rows,
        ),
    ]


def saga_section(results: Mapping[str, Any], level: str) -> list[str]:
    delay_ms = results["saga_payment_delay_s"] * 1000
    limit = delay_ms + SAGA_MARGIN_MS
    saga = results["saga_duration"]
    polled = results["default_profile"]["completion_ms"].get("order") or {}
    poll_interval_ms = results["settings"]["poll_interval_s"] * 1000
    rows = []
    for status in ("all", "completed", "failed"):
        figures = saga.get(status)
        if figures and figures["count"]:
            rows.append(
                [
                    f"`saga_duration_seconds` (order service), {status}",
                    f"{figures['count']:.0f}",
                    quantile_ms(figures, "p50"),
                    quantile_ms(figures, "p95"),
                    verdict(figures["p95_ms"] is not None and figures["p95_ms"] <= limit) if status == "all" else "",
                ]
            )
    if polled:
        rows.append(
            [
                f"k6, creation request to final status seen by polling every {poll_interval_ms:.0f} ms",
                f"{polled['count']:.0f}",
                ms(polled.get("med")),
                ms(polled.get("p(95)")),
                verdict(polled.get("p(95)") is not None and polled["p(95)"] <= limit),
            ]
        )
    return [
        f"{level} Saga completion",
        "",
        f"From order creation to `completed` or `failed`; the saga's payment step waits SAGA_PAYMENT_DELAY_S = "
        f"{results['saga_payment_delay_s']:g} s on purpose, so the target is P95 <= {limit:.0f} ms.",
        "",
        *_table(["Measured by", "Orders", "P50 ms", "P95 ms", f"P95 <= {limit:.0f} ms"], rows),
    ]


def memory_section(results: Mapping[str, Any], level: str) -> list[str]:
    rows = []
    for service, idle in results["memory_idle"].items():
        loaded = results["memory_load"].get(service, {})
        peak = loaded.get("rss_mb")
        workers = loaded.get("workers_rss_mb")
        rows.append(
            [
                service,
                ms(idle["rss_mb"]),
                ms(peak),
                "" if workers is None else f"{ms(idle.get('workers_rss_mb'))} / {ms(workers)}",
                verdict(peak is not None and peak < RSS_TARGET_MB),
            ]
        )
    return [
        f"{level} Memory",
        "",
        "Resident set size of each service's process after start-up and warm-up (idle), and its peak while the",
        "default profile and the click ramp ran. The report service's worker processes are counted apart.",
        "",
        *_table(
            ["Service", "Idle MB", "Peak under load MB", "Workers idle / peak MB", f"< {RSS_TARGET_MB:.0f} MB"], rows
        ),
    ]


def report_body(results: Mapping[str, Any], level: str, chart_path: str) -> list[str]:
    return [
        f"Measured {results['date']} by `make bench` ({results['duration_s']} s) on: {machine_line(results)}",
        "The fleet, RabbitMQ, PostgreSQL and k6 share this machine; on a shared machine the figures are noisy.",
        "",
        f"![Accept latency per scenario, and the click ramp]({chart_path})",
        "",
        *accept_section(results, level),
        "",
        *ledger_section(results, level),
        "",
        *ab_section(results, level),
        "",
        *([*click_section(results, level), ""] if "click_ramp" in results else []),
        *end_to_end_section(results, level),
        "",
        *saga_section(results, level),
        "",
        *memory_section(results, level),
    ]


def render_markdown(results: Mapping[str, Any]) -> str:
    return "\n".join(["# Benchmark", "", *report_body(results, "##", CHART), ""])


def render_readme_section(results: Mapping[str, Any], chart_path: str) -> str:
    return "\n".join(report_body(results, "###", chart_path))


def update_readme(readme: str, section: str) -> str:
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"README.md has no {README_START} ... {README_END} block for the benchmark")
    return pattern.sub(lambda _: f"{README_START}\n{section}\n{README_END}", readme)


def render_chart(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency_axes, ramp_axes) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = results["default_profile"]["accept_latency"]
    labels = [f"{SCENARIOS[row['flow']][0]} {row['flow']}" for row in rows]
    width = 0.26
    for offset, (key, name) in enumerate((("p50_ms", "P50"), ("p95_ms", "P95"), ("p99_ms", "P99"))):
        values = [row[key] or 0.1 for row in rows]
        positions = [index + (offset - 1) * width for index in range(len(rows))]
        bars = latency_axes.bar(positions, values, width, label=name)
        latency_axes.bar_label(bars, labels=[f"{value:.0f}" for value in values], fontsize=7, padding=1)
    latency_axes.axhline(ACCEPT_P95_TARGET_MS, color="tab:orange", linestyle="--", linewidth=1, label="P95 target")
    latency_axes.axhline(ACCEPT_P99_TARGET_MS, color="tab:green", linestyle="--", linewidth=1, label="P99 target")
    latency_axes.set_xticks(range(len(rows)), labels, fontsize=8)
    latency_axes.set_yscale("log")
    latency_axes.set_ylabel("accept latency, ms (log scale)")
    latency_axes.set_title("Default profile: accept latency per scenario", fontsize=10)
    latency_axes.legend(fontsize=8)

    ramp = results.get("click_ramp", {})
    for name, colour in (("fleet", "tab:blue"), ("bare", "tab:gray")):
        if name not in ramp:
            continue
        steps = sorted(ramp[name]["steps"], key=lambda step: step["target_rate"])
        rates = [step["target_rate"] for step in steps]
        p95 = [step["p95_ms"] or 0 for step in steps]
        label = "analyticsservice" if name == "fleet" else "bare FastAPI endpoint"
        ramp_axes.plot(rates, p95, color=colour, marker="o", label=f"{label} (held {ramp[name]['held_rate']:,.0f}/s)")
        for rate, value, step in zip(rates, p95, steps, strict=True):
            if not step["held"]:
                ramp_axes.plot([rate], [value], marker="x", color="tab:red", markersize=9)
    ramp_axes.axhline(results["settings"]["click_p95_limit_ms"], color="tab:red", linestyle="--", linewidth=1)
    ramp_axes.set_xscale("log")
    ramp_axes.set_yscale("log")
    ramp_axes.set_xlabel("offered clicks per second")
    ramp_axes.set_ylabel("P95, ms")
    ramp_axes.set_title("Scenario 6 ramp (x: not held)", fontsize=10)
    ramp_axes.legend(fontsize=8)
    figure.suptitle(
        f"make bench, {results['date']}: {results['machine']['cpu']}, {results['machine']['cores']} cores", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render_outputs(results: Mapping[str, Any], output: Path, readme: Path | None) -> list[Path]:
    chart = output / CHART
    render_chart(results, chart)
    markdown = output / "results.md"
    markdown.write_text(render_markdown(results))
    written = [output / "results.json", markdown, chart]
    if readme is not None:
        relative_chart = chart.relative_to(readme.parent) if chart.is_relative_to(readme.parent) else chart
        readme.write_text(update_readme(readme.read_text(), render_readme_section(results, str(relative_chart))))
        written.append(readme)
    return written
