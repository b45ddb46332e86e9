"""The CPU-bound part of a report, run in worker processes (never in the service's event loop).

Only the standard library is imported here: every worker process imports this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import signal
import sys
import time
from typing import Any

_ROUNDS_PER_CLOCK_CHECK = 1000
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def prepare_worker(niceness: int, service_pid: int) -> None:
    """Worker initializer.

    - A process group of its own: Ctrl-C or a SIGTERM sent to the service's group (honcho, the test
      harness) must not kill a job mid-way; the service stops its workers itself, after in-flight
      jobs. Signals sent to the worker itself keep their default effect (a broken pool stops its
      remaining workers with SIGTERM).
    - If the service dies (SIGKILL, out of memory), the kernel kills its workers too (Linux), so none
      is left behind hashing or waiting for work that will never come.
    - A lower CPU priority keeps background hashing from delaying the service's own answers.
    """
    os.setpgrp()
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != service_pid:  # the service died before the request took effect
            os._exit(1)
    os.nice(niceness)


def worker_pid() -> int:
    return os.getpid()
