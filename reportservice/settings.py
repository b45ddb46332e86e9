from typing import Annotated

from pydantic import Field

from common.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "reportservice"

    # Worker processes for the hashing, and so jobs worked at once by this replica (its prefetch).
    # More than the machine's cores adds no throughput: the work is CPU-bound.
    report_workers: Annotated[int, Field(ge=1, le=64)] = 2
    # A job runs in this many slices; after each, its progress and a checkpoint are saved, so a job
    # whose worker dies resumes from its last checkpoint instead of starting over.
    report_progress_steps: Annotated[int, Field(ge=1, le=1000)] = 20
    # Worker processes run at this lower CPU priority (nice), so when cores are short the process that
    # answers HTTP (and the rest of the machine) goes first; on idle cores it costs the reports nothing.
    report_worker_niceness: Annotated[int, Field(ge=0, le=19)] = 5
