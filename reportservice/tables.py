from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from common.database import service_metadata

metadata = service_metadata("reportservice")

JOB_STATUSES = ("queued", "running", "completed", "failed")

# Job status lives here, not in process memory: any replica may work a job, and any may be asked about it.
report_jobs = Table(
    "report_jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("report_type", Text, nullable=False),
    Column("parameters", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default="queued"),
    Column("progress", SmallInteger, nullable=False, server_default="0"),
    # Times a worker picked the job up (more than one after a worker died or a retry).
    Column("attempts", Integer, nullable=False, server_default="0"),
    # The service instance that picked the job up last (`<service>@<host>:<pid>`).
    Column("worker", Text, nullable=True),
    # The last finished slice and the hash chain after it: where a picked-up-again job resumes.
    Column("checkpoint_step", Integer, nullable=False, server_default="0"),
    Column("checkpoint_digest", LargeBinary, nullable=True),
    Column("worked_seconds", Float, nullable=False, server_default="0"),
    Column("report_hash", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"status IN {JOB_STATUSES!r}", name="known_status"),
    CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
)
