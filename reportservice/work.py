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

    - A session of its own: Ctrl-C or a SIGTERM sent to the service's process group (honcho, the test
      harness) must not kill a job mid-way; the service stops its workers itself, after in-flight
      jobs. Signals sent to the worker itself keep their default effect (a broken pool stops its
      remaining workers with SIGTERM).
    - If the service dies (SIGKILL, out of memory), the kernel kills its workers too (Linux), so none
      is left behind hashing or waiting for work that will never come.
    - Hashing only on CPU nothing else wants: see `yield_the_cpu`.
    """
    os.setsid()
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != service_pid:  # the service died before the request took effect
            os._exit(1)
    yield_the_cpu(niceness)


def yield_the_cpu(niceness: int) -> None:
    """Lower this process below everything else on the machine, in each scheduler that ranks it.

    - Linux autogroups (on by default): every session is a scheduling group weighed as one against the
      others, so a plain `nice` only ranks a worker against its own service. The worker's session is
      new (see `prepare_worker`), so its autogroup holds nothing else: its niceness ranks the whole
      group, and so the worker, against every other session on the machine (`make run`, the tests).
    - SCHED_IDLE: within its group the worker runs only when nothing else there is runnable. This is
      what holds in a container, where autogroups do not apply (the container's own CPU weight,
      `cpu_shares` in the compose file, ranks it against the other containers).
    - Without either (another OS), the process's niceness.

    Measured with `make bench` (README, "Report workers"): with workers at a plain `nice 5`, every
    worker weighed as much as a whole service and the accept P95 doubled while reports ran.
    """
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(niceness))
    except OSError:  # no autogroups (kernel option, or not Linux)
        pass
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(niceness)


def worker_pid() -> int:
    return os.getpid()
