"""make compare's report: the comparison table, README's block, and what counts as a vacuous series."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.compare_render import (
    README_END,
    README_START,
    render_comparison,
    render_markdown,
    report_body,
    vacuous_series,
)
from bench.render import SCENARIOS


def flow_row(flow: str, p95_ms: float) -> dict[str, Any]:
    return {
        "flow": flow,
        "accepted": 10,
        "p50_ms": p95_ms / 2,
        "p95_ms": p95_ms,
        "p99_ms": p95_ms * 1.5,
        "max_ms": p95_ms * 2,
        "failed_requests": 0,
        "requests": 10,
        "checks_passed": 20,
        "checks_failed": 0,
    }


def fleet(p95_ms: float, held: float, statuses_during: dict[str, int]) -> dict[str, Any]:
    phase = {"requests": 5, "statuses": {"201": 5}, "p95_ms": 10.0}
    return {
        "profile": {
            "accept_latency": [flow_row(flow, p95_ms) for flow in SCENARIOS],
            "completion_ms": {"payment": {"p(95)": 2100.0}, "report": {"p(95)": 10500.0}, "order": {"p(95)": 900.0}},
            "fleet_cpu_s": 12.5,
            "report_workers_cpu_s": 20.0,
            "requests": 60,
            "cpu_ms_per_request": 208.3,
        },
        "memory_peak_mb": 900.0,
        "ramps": {
            "register": {"p95_limit_ms": 1000.0, "held_rate": held, "steps": []},
            "click": {"p95_limit_ms": 50.0, "held_rate": held, "steps": []},
        },
        "resilience": {
            "clients": 2,
            "email_down_from_s": 3.0,
            "email_down_until_s": 8.0,
            "phases": {
                "before": phase,
                "during": {"requests": 5, "statuses": statuses_during, "p95_ms": 12.0},
                "after": phase,
            },
            "accepted": 15,
            "refused": 0,
            "users_registered": 15,
            "welcome_emails_delivered": 15,
        },
    }


@pytest.fixture
def results() -> dict[str, Any]:
    return {
        "date": "2026-12-04T02:00:00+00:00",
        "machine": {"cpu": "test cpu", "cores": 2, "memory_gb": 24, "os": "Linux", "python": "3.11"},
        "short": True,
        "load_average": {"start": [1.0, 1.0, 1.0]},
        "settings": {"k6_profile": "smoke", "step_s": 4, "outage_s": 4.0, "resilience_s": 12.0},
        "artifacts": "test-artifacts/compare-test",
        "duration_s": 130,
        "fleets": {"async": fleet(20.0, 400, {"202": 5}), "sync": fleet(500.0, 100, {"503": 5})},
    }


def test_a_complete_comparison_has_no_vacuous_series(results: dict[str, Any]) -> None:
    assert vacuous_series(results) == []


@pytest.mark.parametrize(
    ("break_it", "complaint"),
    [
        (
            lambda r: r["fleets"]["sync"]["profile"]["accept_latency"][0].update(accepted=0),
            "sync register: no successful",
        ),
        (
            lambda r: r["fleets"]["async"]["profile"]["accept_latency"][5].update(p95_ms=None),
            "async click: no successful",
        ),
        (lambda r: r["fleets"]["sync"]["profile"]["accept_latency"][3].update(checks_failed=2), "2 failed checks"),
        (lambda r: r["fleets"]["async"]["ramps"]["click"].update(held_rate=0), "async click ramp: no rate held"),
        (lambda r: r["fleets"]["sync"]["resilience"]["phases"]["during"].update(requests=0), "no request during"),
        (lambda r: r["fleets"]["sync"]["profile"].update(fleet_cpu_s=0.0), "sync: no CPU time"),
    ],
)
def test_an_empty_or_vacuous_series_is_named(results: dict[str, Any], break_it: Any, complaint: str) -> None:
    broken = copy.deepcopy(results)
    break_it(broken)
    problems = vacuous_series(broken)
    assert any(complaint in problem for problem in problems), problems


def test_the_report_shows_each_fleet_and_the_ratio(results: dict[str, Any], tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold figures\n{README_END}\nrest\n")
    written = render_comparison(results, tmp_path / "compare", readme)
    markdown = (tmp_path / "compare" / "results.md").read_text()
    assert "| 1 `POST /register` | 20.0 | 30.0 | 500.0 | 750.0 | 25.0x | 5x |" in markdown
    assert "| Registrations (P95 < 1000 ms, no errors) | 400/s | 100/s | 4.0x |" in markdown
    assert "5 x 503" in markdown
    assert (tmp_path / "compare" / "compare.png").read_bytes().startswith(b"\x89PNG")
    text = readme.read_text()
    assert "old figures" not in text
    assert text.startswith("intro\n")
    assert text.endswith("rest\n")
    assert "![sync vs async](compare/compare.png)" in text
    assert readme in written


def test_a_readme_without_the_block_is_refused(results: dict[str, Any], tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    with pytest.raises(ValueError, match="compare:start"):
        render_comparison(results, tmp_path / "compare", readme)


def test_readme_shows_what_make_compare_rendered() -> None:
    """README.md's comparison block is docs/compare/results.json rendered: the figures and the file agree."""
    root = Path(__file__).resolve().parents[2]
    results = json.loads((root / "docs" / "compare" / "results.json").read_text())
    section = "\n".join(report_body(results, "###", "docs/compare/compare.png"))
    assert f"{README_START}\n{section}\n{README_END}" in (root / "README.md").read_text(), "run `make compare`"
    assert (root / "docs" / "compare" / "results.md").read_text() == render_markdown(results)
    assert (root / "docs" / "compare" / "compare.png").read_bytes().startswith(b"\x89PNG")
