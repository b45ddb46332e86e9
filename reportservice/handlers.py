import logging
import time

from common import topology
from common.consumer import MessageContext, Reject
from common.database import is_dependency_failure
from common.events import GenerateReportJob
from reportservice.jobs import COMPLETE, FAIL, READ_FOR_FAILING, JobStore
from reportservice.metrics import REPORT_JOB_DURATION, REPORT_JOBS, REPORT_QUEUE_WAIT
from reportservice.settings import Settings
from reportservice.work import ReportFailed, hash_for, seed_digest
from reportservice.workers import ReportWorkers

log = logging.getLogger(__name__)

# A demonstration knob in `parameters`: the worker fails half-way with this reason.
SIMULATED_FAILURE_PARAMETER = "simulate_failure"


async def generate_report(event: GenerateReportJob, ctx: MessageContext[GenerateReportJob]) -> None:
    """Work a report job in slices on the worker processes, saving progress after each slice.

    The event loop only awaits the workers, so the service keeps answering HTTP while reports run.
    A job picked up again (its worker died, its service was killed, a retry) resumes from its
    last checkpoint. A job can run twice in rare cases (a duplicate delivery racing the first):
    checkpoints never move backwards and only the first completion counts.
    """
    settings = ctx.settings
    assert isinstance(settings, Settings)
    jobs = ctx.resources.get(JobStore)
    workers = ctx.resources.get(ReportWorkers)

    job = await jobs.pick_up(event.job_id)
    if job is None:
        if not await jobs.exists(event.job_id):
            raise Reject(f"report job {event.job_id} does not exist")
        log.info("report job %s is finished already; nothing to do", event.job_id)
        return

    picked_up = time.perf_counter()
    if job["checkpoint_step"] == 0 and ctx.attempt == 1:
        waited = max(0.0, time.time() - event.occurred_at.timestamp())
        REPORT_QUEUE_WAIT.labels(report_type=event.report_type).observe(waited)
    steps = settings.report_progress_steps
    cpu_per_step = settings.report_cpu_seconds / steps
    digest = job["checkpoint_digest"] or seed_digest(event.job_id, event.report_type, event.parameters)
    failure = event.parameters.get(SIMULATED_FAILURE_PARAMETER)
    if job["checkpoint_step"]:
        log.info("resuming report job %s at step %d of %d", event.job_id, job["checkpoint_step"], steps)
    try:
        for step in range(job["checkpoint_step"] + 1, steps + 1):
            fail_now = str(failure) if failure is not None and step > steps // 2 else None
            started = time.perf_counter()
            digest = await workers.run(hash_for, digest, cpu_per_step, fail_now)
            await jobs.checkpoint(event.job_id, step, steps, digest, time.perf_counter() - started)
    except ReportFailed as exc:
        async with ctx.transaction() as unit:
            await unit.connection.execute(FAIL, job_id=event.job_id, reason=str(exc))
        _observe_finished(event.report_type, "failed", picked_up)
        log.warning("report job %s failed: %s", event.job_id, exc)
        return
    except Exception as exc:
        gives_up = ctx.attempt >= settings.max_delivery_attempts and not is_dependency_failure(exc)
        if gives_up and await jobs.fail(
            event.job_id, f"gave up after {ctx.attempt} attempts: {type(exc).__name__}: {exc}"
        ):
            _observe_finished(event.report_type, "failed", picked_up)
        raise

    async with ctx.transaction() as unit:
        await unit.connection.execute(COMPLETE, job_id=event.job_id, report_hash=digest.hex())
    _observe_finished(event.report_type, "completed", picked_up)
    log.info("report job %s completed", event.job_id)


async def fail_dead_lettered_job(event: GenerateReportJob, ctx: MessageContext[GenerateReportJob]) -> None:
    """A report job's message reached `report_jobs_queue.dlq`: the job will never run again, so it ends `failed`.

    The workers' handler fails a job itself whenever it gives up (a report that cannot be produced, a
    failure on the last attempt), with the error as the reason: such a job is finished here already and
    keeps its outcome, as does a completed job whose late duplicate was dead-lettered. A job still queued
    or running was dead-lettered with no handler giving up on it: by the broker, which dead-letters a
    message of a main queue only once it was delivered past the delivery limit without an acknowledgement
    (its service died or lost the broker holding it, again and again; the fleet's consumers never reject,
    and the main queues expire nothing). Either way the message is acknowledged: the job table now holds
    what it said (job, parameters, reason). One that names no job is rejected, so it goes on to this
    queue's own `.dlq`, where it stays for operators.
    """
    settings = ctx.settings
    async with ctx.transaction() as unit:
        job = await unit.connection.fetchrow(READ_FOR_FAILING, job_id=event.job_id)
        if job is None:
            raise Reject(f"report job {event.job_id} does not exist: nothing records this dead letter")
        if job["status"] not in ("queued", "running"):
            log.info("dead-lettered report job %s is %s already; acknowledging", event.job_id, job["status"])
            return
        if ctx.attempt >= settings.max_delivery_attempts:
            cause = f"out of attempts ({ctx.attempt})"
        else:
            cause = (
                "delivered past the broker's delivery limit without an acknowledgement "
                "(whoever worked it kept dying or losing the broker)"
            )
        reason = f"dead-lettered from {topology.REPORT_JOBS.name}: {cause}; picked up {job['attempts']} times"
        await unit.connection.execute(FAIL, job_id=event.job_id, reason=reason)
    REPORT_JOBS.labels(report_type=job["report_type"], status="failed").inc()
    log.warning("report job %s failed: %s", event.job_id, reason)


def _observe_finished(report_type: str, status: str, picked_up: float) -> None:
    REPORT_JOBS.labels(report_type=report_type, status=status).inc()
    REPORT_JOB_DURATION.labels(report_type=report_type, status=status).observe(time.perf_counter() - picked_up)
