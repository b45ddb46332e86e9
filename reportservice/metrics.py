"""What the report workers did, for the Scenario 4 dashboard row."""

from prometheus_client import Counter, Histogram

from common.metrics import LATENCY_BUCKETS_S

JOB_BUCKETS_S = (*LATENCY_BUCKETS_S, 15.0, 20.0, 30.0, 60.0, 120.0)

REPORT_JOBS = Counter(
    "report_jobs_total", "Report jobs finished, by report type and status.", ["report_type", "status"]
)
REPORT_JOB_DURATION = Histogram(
    "report_job_duration_seconds",
    "From a worker picking the job up until it finished (resumed jobs: since they were resumed).",
    ["report_type", "status"],
    buckets=JOB_BUCKETS_S,
)
REPORT_QUEUE_WAIT = Histogram(
    "report_job_queue_wait_seconds",
    "From the job's acceptance until a worker first picked it up.",
    ["report_type"],
    buckets=JOB_BUCKETS_S,
)
