"""Job status writes made while a job runs (each committed at once, so pollers see them)."""

from __future__ import annotations

from sqlalchemy import Row, Update, func, select, update

from common.database import Database
from reportservice.tables import report_jobs


class JobStore:
    def __init__(self, database: Database, worker: str) -> None:
        self._database = database
        self._worker = worker

    async def pick_up(self, job_id: str) -> Row | None:
        """Mark the job running (again, if its last worker died); None if it is finished or unknown."""
        async with self._database.transaction() as connection:
            return (
                await connection.execute(
                    update(report_jobs)
                    .where(report_jobs.c.job_id == job_id, report_jobs.c.status.in_(("queued", "running")))
                    .values(
                        status="running",
                        attempts=report_jobs.c.attempts + 1,
                        worker=self._worker,
                        started_at=func.coalesce(report_jobs.c.started_at, func.now()),
                        updated_at=func.now(),
                    )
                    .returning(report_jobs)
                )
            ).first()

    async def exists(self, job_id: str) -> bool:
        async with self._database.engine.connect() as connection:
            found = await connection.scalar(select(report_jobs.c.job_id).where(report_jobs.c.job_id == job_id))
        return found is not None

    async def checkpoint(self, job_id: str, step: int, steps: int, digest: bytes, worked_seconds: float) -> None:
        """Record a finished slice. Never moves a job backwards (a duplicate run may lag behind)."""
        async with self._database.transaction() as connection:
            await connection.execute(
                update(report_jobs)
                .where(
                    report_jobs.c.job_id == job_id,
                    report_jobs.c.status == "running",
                    report_jobs.c.checkpoint_step < step,
                )
                .values(
                    checkpoint_step=step,
                    checkpoint_digest=digest,
                    # 99 at most: 100 only with the result, so `progress == 100` always means completed.
                    progress=min(99, step * 100 // steps),
                    worked_seconds=report_jobs.c.worked_seconds + worked_seconds,
                    updated_at=func.now(),
                )
            )

    async def fail(self, job_id: str, reason: str) -> None:
        async with self._database.transaction() as connection:
            await connection.execute(fail_statement(job_id, reason))


def fail_statement(job_id: str, reason: str) -> Update:
    return (
        update(report_jobs)
        .where(report_jobs.c.job_id == job_id, report_jobs.c.status.in_(("queued", "running")))
        .values(status="failed", reason=reason, finished_at=func.now(), updated_at=func.now())
    )
