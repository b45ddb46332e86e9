from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import bindparam, insert, select

from common.events import GenerateReportJob
from common.inputs import StorableText, storable_json
from common.service import CALL_FAILED_RESPONSES, UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement
from reportservice.tables import report_jobs

router = APIRouter(tags=["reports"])

ReportType = Literal["daily", "weekly", "monthly", "quarterly", "annual"]
JobStatusName = Literal["queued", "running", "completed", "failed"]

MAX_PARAMETERS_BYTES = 4096

QUEUE_JOB = Statement(
    insert(report_jobs).values(
        job_id=bindparam("job_id"),
        report_type=bindparam("report_type"),
        parameters=bindparam("parameters", type_=report_jobs.c.parameters.type),
        status="queued",
    )
)
READ_JOB = Statement(select(report_jobs).where(report_jobs.c.job_id == bindparam("job_id")))


class ReportRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"report_type": "monthly"}, {"report_type": "daily", "parameters": {"region": "EU"}}]
        },
    )

    report_type: ReportType
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form report parameters (a JSON object of at most 4 KB). For demonstrations, "
        '`{"simulate_failure": "<reason>"}` makes the worker fail half-way with that reason.',
    )

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(parameters, default=str)) > MAX_PARAMETERS_BYTES:
            raise ValueError(f"parameters must serialise to at most {MAX_PARAMETERS_BYTES} bytes of JSON")
        return storable_json(parameters)  # stored as jsonb, which holds no NUL


class ReportAccepted(BaseModel):
    job_id: str = Field(examples=["job_5f0c2a9d8e6b4c1fa3d7e2b9c4a1f6e8"])
    status: Literal["queued"] = "queued"
    message: str = Field(examples=["Report generation job queued. Processing in background."])


class JobStatus(BaseModel):
    job_id: str = Field(examples=["job_5f0c2a9d8e6b4c1fa3d7e2b9c4a1f6e8"])
    report_type: ReportType
    parameters: dict[str, Any]
    status: JobStatusName = Field(
        description="`queued`, then `running` (with `progress`), then `completed` or `failed`."
    )
    progress: int = Field(ge=0, le=100, description="Percent of the work done; 100 only once completed.")
    attempts: int = Field(description="Times a worker picked the job up (more than 1 after a worker died).")
    worker: str | None = Field(
        description="The service instance that picked the job up last.", examples=["reportservice@host:4242"]
    )
    report_hash: str | None = Field(description="The report's result, once completed.")
    duration_seconds: float | None = Field(
        description="Seconds the workers spent on the report, once completed.", examples=[10.02]
    )
    reason: str | None = Field(description="Why the job failed, if it did.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.post(
    "/generate_report",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReportAccepted | JobStatus,  # a JSONResponse (the synchronous fleet's failures) passes as it is
    summary="Queue a report; worker processes generate it in the background",
    description="The job and its `GenerateReportJob` event commit together; poll `GET /jobs/{job_id}`. "
    "The synchronous fleet answers once the workers are done: 200 with the report's hash.",
    responses={
        200: {"model": JobStatus, "description": "Synchronous fleet: the completed job, with its hash."},
        500: {"model": ErrorResponse, "description": "Synchronous fleet: the report failed."},
        **UNAVAILABLE_RESPONSE,
        **CALL_FAILED_RESPONSES,
    },
)
async def generate_report(
    request: ReportRequest, response: Response, runtime: RuntimeDep
) -> ReportAccepted | JobStatus | JSONResponse:
    job_id = f"job_{uuid.uuid4().hex}"
    async with runtime.outbox.transaction() as unit:
        await unit.connection.execute(
            QUEUE_JOB, job_id=job_id, report_type=request.report_type, parameters=request.parameters
        )
        unit.publish(GenerateReportJob(job_id=job_id, report_type=request.report_type, parameters=request.parameters))
    if runtime.synchronous:
        job = await read_job(job_id, runtime)
        if job.status != "completed":
            detail = f"report {job_id} {job.status}: {job.reason or 'no reason given'}"
            return JSONResponse(status_code=status.HTTP_500_INTERNAL_SERVER_ERROR, content={"detail": detail})
        response.status_code = status.HTTP_200_OK
        return job
    return ReportAccepted(job_id=job_id, message="Report generation job queued. Processing in background.")


@router.get(
    "/jobs/{job_id}",
    summary="A report job's status, progress and result",
    responses={404: {"model": ErrorResponse, "description": "No such job."}, **UNAVAILABLE_RESPONSE},
)
async def read_job(job_id: StorableText, runtime: RuntimeDep) -> JobStatus:
    job = await runtime.database.fetchrow(READ_JOB, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job_id} not found")
    completed = job["status"] == "completed"
    return JobStatus(
        job_id=job["job_id"],
        report_type=job["report_type"],
        parameters=job["parameters"],
        status=job["status"],
        progress=job["progress"],
        attempts=job["attempts"],
        worker=job["worker"],
        report_hash=job["report_hash"],
        duration_seconds=round(job["worked_seconds"], 3) if completed else None,
        reason=job["reason"],
        created_at=job["created_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
    )
