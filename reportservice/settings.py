import os
from typing import Annotated

from pydantic import Field

from common.settings import ServiceSettings


def _all_cores_but_one() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class Settings(ServiceSettings):
    service_name: str = "reportservice"

    # Worker processes for the hashing, and so jobs worked at once by this replica (its prefetch).
    # More than the machine's cores adds no throughput (the work is CPU-bound); by default one core is
    # left to the serving side, which matters on a small machine.
    report_workers: Annotated[int, Field(ge=1, le=64)] = Field(default_factory=_all_cores_but_one)
    # A job runs in this many slices; after each, its progress and a checkpoint are saved, so a job
    # whose worker dies resumes from its last checkpoint instead of starting over.
    report_progress_steps: Annotated[int, Field(ge=1, le=1000)] = 20
    # Worker processes hash on CPU nothing else wants: SCHED_IDLE, in a session (autogroup) of their own
    # at this niceness, so when cores are short every service (and the rest of the machine) goes first;
    # on idle cores it costs the reports nothing. See reportservice/work.py, `yield_the_cpu`.
    report_worker_niceness: Annotated[int, Field(ge=0, le=19)] = 19
