"""Job status writes made while a job runs (each committed at once, so pollers see them)."""

from __future__ import annotations

from asyncpg import Record
from sqlalchemy import Float, LargeBinary, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import array

from common.database import Database
from common.sql import Statement, affected_rows
from reportservice.tables import report_jobs

_JOB = bindparam("job_id")
_UNFINISHED = report_jobs.c.status == any_(array(("queued", "running")))

PICK_UP = Statement(
    update(report_jobs)
    .where(report_jobs.c.job_id == _JOB, _UNFINISHED)
    .values(
        status="running",
        attempts=report_jobs.c.attempts + 1,
        worker=bindparam("worker"),
        started_at=func.coalesce(report_jobs.c.started_at, func.now()),
        updated_at=func.now(),
    )
    .returning(report_jobs)
)
EXISTS = Statement(select(report_jobs.c.job_id).where(report_jobs.c.job_id == _JOB))
# A job whose message was dead-lettered, locked until the transaction deciding its fate commits.
READ_FOR_FAILING = Statement(
    select(report_jobs.c.status, report_jobs.c.report_type, report_jobs.c.attempts)
    .where(report_jobs.c.job_id == _JOB)
    .with_for_update()
)
# Never moves a job backwards (a duplicate run may lag behind).
CHECKPOINT = Statement(
    update(report_jobs)
    .where(
        report_jobs.c.job_id == _JOB,
        report_jobs.c.status == "running",
        report_jobs.c.checkpoint_step < bindparam("step"),
    )
    .values(
        checkpoint_step=bindparam("step"),
        checkpoint_digest=bindparam("digest", type_=LargeBinary),
        # 99 at most: 100 only with the result, so `progress == 100` always means completed.
        progress=bindparam("progress"),
        worked_seconds=report_jobs.c.worked_seconds + bindparam("worked_seconds", type_=Float),
        updated_at=func.now(),
    )
)
# Only a job still queued or running fails: a finished one (completed, or failed already) keeps its outcome.
FAIL = Statement(
    update(report_jobs)
    .where(report_jobs.c.job_id == _JOB, _UNFINISHED)
    .values(status="failed", reason=bindparam("reason"), finished_at=func.now(), updated_at=func.now())
)
COMPLETE = Statement(
    update(report_jobs)
    .where(report_jobs.c.job_id == _JOB, report_jobs.c.status == "running")
    .values(
        status="completed",
        progress=100,
        report_hash=bindparam("report_hash"),
        finished_at=func.now(),
        updated_at=func.now(),
    )
)


class JobStore:
    def __init__(self, database: Database, worker: str) -> None:
        self._database = database
        self._worker = worker

    async def pick_up(self, job_id: str) -> Record | None:
        """Mark the job running (again, if its last worker died); None if it is finished or unknown."""
        return await self._database.fetchrow(PICK_UP, job_id=job_id, worker=self._worker)

    async def exists(self, job_id: str) -> bool:
        return await self._database.fetchval(EXISTS, job_id=job_id) is not None

    async def checkpoint(self, job_id: str, step: int, steps: int, digest: bytes, worked_seconds: float) -> None:
        """Record a finished slice."""
        await self._database.execute(
            CHECKPOINT,
            job_id=job_id,
            step=step,
            digest=digest,
            progress=min(99, step * 100 // steps),
            worked_seconds=worked_seconds,
        )

    async def fail(self, job_id: str, reason: str) -> bool:
        """Mark the job failed unless it is finished already; return whether it was."""
        return affected_rows(await self._database.execute(FAIL, job_id=job_id, reason=reason)) == 1
