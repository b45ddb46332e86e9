from fastapi import FastAPI

from common import topology
from common.consumer import CheckProcessedFirst
from common.service import create_service
from reportservice.api import router
from reportservice.handlers import fail_dead_lettered_job, generate_report
from reportservice.settings import Settings
from reportservice.tables import metadata
from reportservice.workers import report_workers


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service(
        settings,
        title="ReportService",
        description="Scenario 4 (CPU job offloading): `POST /generate_report` queues a job and answers 202 at "
        "once; `REPORT_WORKERS` worker processes take jobs from `report_jobs_queue` and do "
        "`REPORT_CPU_SECONDS` of SHA-256 hashing each, outside the process that serves HTTP. "
        "`GET /jobs/{job_id}` shows queued, running with progress, then completed or failed; a job whose message "
        "is dead-lettered (`report_jobs_queue.dlq`) fails with the reason.",
        metadata=metadata,
        routers=[router],
        subscriptions={
            topology.REPORT_JOBS: CheckProcessedFirst(generate_report),  # minutes of CPU first
            # What the broker or the consumer gave up on: the job ends failed with the reason.
            topology.REPORT_JOB_DEAD_LETTERS: fail_dead_lettered_job,
        },
        lifespans=[report_workers],
        # One job per worker process: the rest wait in the queue, where another replica can take them.
        prefetch_overrides={topology.REPORT_JOBS: settings.report_workers},
    )


app = create_app()
