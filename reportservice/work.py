"""The CPU-bound part of a report, run in worker processes (never in the service's event loop).

Only the standard library is imported here: every worker process imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from typing import Any

_ROUNDS_PER_CLOCK_CHECK = 1000


class ReportFailed(Exception):
    """The report cannot be produced from its parameters; retrying would fail the same way."""


def seed_digest(job_id: str, report_type: str, parameters: dict[str, Any]) -> bytes:
    """Where a job's hash chain starts: fixed by what the job is."""
    material = json.dumps([job_id, report_type, parameters], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(material.encode()).digest()


def hash_for(digest: bytes, cpu_seconds: float, failure: str | None = None) -> bytes:
    """Extend a SHA-256 chain for `cpu_seconds` of this process's CPU time; return the last digest.

    CPU time rather than wall time: a report costs the same work however busy the machine is, so
    more workers than cores cannot make it look faster than it is.
    """
    if failure is not None:
        raise ReportFailed(failure)
    deadline = time.process_time() + cpu_seconds
    while time.process_time() < deadline:
        for _ in range(_ROUNDS_PER_CLOCK_CHECK):
            digest = hashlib.sha256(digest).digest()
    return digest


def prepare_worker(niceness: int) -> None:
    """Worker initializer. Ctrl-C and SIGTERM reach the whole process group, but only the service
    decides when its workers stop (after in-flight jobs are finished or handed back). A lower CPU
    priority keeps background hashing from delaying the service's own answers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(niceness)


def worker_pid() -> int:
    return os.getpid()
