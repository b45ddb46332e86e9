"""Scenario 4: a report job whose message is dead-lettered ends `failed` with the reason, and is counted.

Two ways a job's message dies, each tested the way it happens:
- its *service* keeps dying while working it (killed, out of memory): nothing is acknowledged, the
  broker redelivers, and past the queue's delivery limit it dead-letters the message itself;
- its *worker process* keeps dying: the service notices (the pool breaks), retries, and gives up after
  `MAX_DELIVERY_ATTEMPTS`.
Also: what names no job stays visible for operators, and a completed job never turns failed.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from common.events import GenerateReportJob
from common.topology import REPORT_JOB_DEAD_LETTERS, REPORT_JOBS
from tests.e2e.test_scenario4_reports import finished, job, submit
from tests.support.fleet import Fleet
from tests.support.metrics import sample
from tests.support.rabbitmq import Management
from tests.support.saga import consumed, properties_of
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

# Reports long enough to kill them mid-way; one worker, so killing the workers kills the job's. Three
# attempts rather than five (MAX_DELIVERY_ATTEMPTS is the service's own setting), to keep the test short.
DYING_REPORTS = {"REPORT_CPU_SECONDS": "3", "REPORT_WORKERS": "1", "MAX_DELIVERY_ATTEMPTS": "3"}
ATTEMPTS = 3

# The broker's delivery limit for `report_jobs_queue`, lowered for one test by an operator's policy (the
# broker applies the lower of the policy and the queue's `x-delivery-limit`), so that reaching it takes
# three deaths of the service rather than 21. The path is the one DELIVERY_LIMIT takes in production.
TEST_DELIVERY_LIMIT = 2
LIMIT_POLICY = "test-report-jobs-delivery-limit"

DEAD_LETTERS = REPORT_JOB_DEAD_LETTERS.name  # report_jobs_queue.dlq
KEPT_FOR_OPERATORS = REPORT_JOB_DEAD_LETTERS.dead_letter_queue  # report_jobs_queue.dlq.dlq


@pytest.fixture(scope="module")
async def dying_reports(fleet: Fleet) -> AsyncIterator[None]:
    async with fleet.reconfigured("reportservice", DYING_REPORTS):
        yield


async def running_pick_up(http: httpx.AsyncClient, fleet: Fleet, job_id: str, pick_up: int) -> dict[str, Any] | None:
    """The job, once it runs for the `pick_up`-th time."""
    state = await job(http, fleet.url("reportservice"), job_id)
    return state if state["status"] == "running" and state["attempts"] == pick_up else None


async def messages_of(management: Management, queue: str, job_id: str) -> list[dict[str, Any]]:
    """The messages of `queue` that carry report job `job_id` (read without consuming them)."""
    return [message for message in await management.peek(queue, count=500) if job_id in message["payload"]]


async def failed_count(http: httpx.AsyncClient, fleet: Fleet, report_type: str) -> float:
    return await sample(http, fleet.url("reportservice"), "report_jobs_total", report_type=report_type, status="failed")


async def test_a_job_whose_service_keeps_dying_fails_once_the_broker_dead_letters_it(
    dying_reports: None, fleet: Fleet, http: httpx.AsyncClient, management: Management
) -> None:
    await management.set_policy(LIMIT_POLICY, f"^{REPORT_JOBS.name}$", {"delivery-limit": TEST_DELIVERY_LIMIT})
    try:
        await eventually(
            lambda: _policy_applies(management), interval=0.5, message="the delivery-limit policy did not apply"
        )
        job_id = await submit(http, fleet.url("reportservice"), "weekly")
        deliveries = TEST_DELIVERY_LIMIT + 1  # the broker delivers a message up to the limit, plus once
        for pick_up in range(1, deliveries + 1):
            await eventually(
                lambda pick_up=pick_up: running_pick_up(http, fleet, job_id, pick_up),
                timeout=60,
                message=f"pick-up {pick_up} of the job did not start",
            )
            await fleet.kill("reportservice")  # SIGKILL mid-job; its worker dies with it
            if pick_up < deliveries:
                await fleet.start("reportservice", environment=DYING_REPORTS)

        # With the service down, the dead letter waits in report_jobs_queue.dlq as the broker put it there.
        [dead] = await eventually(
            lambda: messages_of(management, DEAD_LETTERS, job_id),
            interval=0.5,
            message="the broker did not dead-letter the job's message",
        )
        assert dead["properties"]["headers"]["x-first-death-reason"] == "delivery_limit"

        await fleet.start("reportservice", environment=DYING_REPORTS)
        url = fleet.url("reportservice")
        done = await eventually(lambda: finished(http, url, job_id), timeout=30, message="the job did not end")
        assert done["status"] == "failed", done
        assert "delivery limit" in done["reason"], done["reason"]
        assert f"picked up {deliveries} times" in done["reason"], done["reason"]
        assert (done["attempts"], done["report_hash"], done["duration_seconds"]) == (deliveries, None, None)
        assert done["progress"] < 100
        assert done["finished_at"] is not None
        # Counted by the process that failed it (a fresh one: its counters start at zero).
        assert await failed_count(http, fleet, "weekly") == 1.0
        # The job table holds it now: acknowledged from the dead-letter queue, not passed on.
        await eventually(
            lambda: _gone(management, DEAD_LETTERS, job_id),
            interval=0.5,
            message="the dead letter stayed in report_jobs_queue.dlq",
        )
        assert await messages_of(management, KEPT_FOR_OPERATORS, job_id) == []
    finally:
        await management.delete_policy(LIMIT_POLICY)
        if not fleet.is_running("reportservice"):
            await fleet.start("reportservice", environment=DYING_REPORTS)


async def _policy_applies(management: Management) -> bool:
    return (await management.queue(REPORT_JOBS.name)).get("policy") == LIMIT_POLICY


async def _gone(management: Management, queue: str, job_id: str) -> bool:
    return await messages_of(management, queue, job_id) == []


async def test_a_job_whose_worker_keeps_dying_fails_when_out_of_attempts(
    dying_reports: None, fleet: Fleet, http: httpx.AsyncClient
) -> None:
    url = fleet.url("reportservice")
    failed_before = await failed_count(http, fleet, "monthly")
    dead_letters_before = await consumed(http, url, DEAD_LETTERS, "acked")
    job_id = await submit(http, url, "monthly")
    for attempt in range(1, ATTEMPTS + 1):
        await eventually(
            lambda attempt=attempt: running_pick_up(http, fleet, job_id, attempt),
            timeout=60,
            message=f"attempt {attempt} of the job did not start",
        )
        for pid in fleet.worker_processes("reportservice"):  # the OOM killer, say, again and again
            os.kill(pid, signal.SIGKILL)

    done = await eventually(lambda: finished(http, url, job_id), timeout=60, message="the job did not end")
    assert done["status"] == "failed", done
    assert done["reason"].startswith(f"gave up after {ATTEMPTS} attempts: BrokenProcessPool"), done["reason"]
    assert done["attempts"] == ATTEMPTS
    assert fleet.is_running("reportservice"), "the service itself survived"
    # The consumer dead-lettered the message; the dead-letter consumer acknowledged it (the job table holds
    # it) and left the reason the worker's handler gave; the failure is counted once.
    await eventually(
        lambda: _consumed_above(http, url, DEAD_LETTERS, "acked", dead_letters_before),
        message="the dead-lettered copy was not taken from report_jobs_queue.dlq",
    )
    assert (await job(http, url, job_id))["reason"] == done["reason"]
    assert await failed_count(http, fleet, "monthly") == failed_before + 1


async def _consumed_above(http: httpx.AsyncClient, url: str, queue: str, outcome: str, before: float) -> bool:
    return await consumed(http, url, queue, outcome) > before


async def test_dead_letters_that_name_no_job_stay_visible_for_operators(
    dying_reports: None, fleet: Fleet, management: Management
) -> None:
    malformed_id = f"malformed-{secrets.token_hex(4)}"
    await management.publish(REPORT_JOBS.name, '{"job_id": "job_', {"message_id": malformed_id})
    unknown = GenerateReportJob(job_id=f"job_nosuchjob{secrets.token_hex(8)}", report_type="daily")
    await management.publish(REPORT_JOBS.name, unknown.model_dump_json(), properties_of(unknown))

    async def both_kept() -> dict[str, dict[str, Any]] | None:
        kept = {
            message["properties"].get("message_id"): message for message in await management.peek(KEPT_FOR_OPERATORS)
        }
        return kept if {malformed_id, str(unknown.event_id)} <= set(kept) else None

    kept = await eventually(both_kept, timeout=30, interval=0.5, message="not passed on to report_jobs_queue.dlq.dlq")
    malformed = kept[malformed_id]
    assert malformed["payload"] == '{"job_id": "job_', "kept byte for byte"
    assert "not a valid GenerateReportJob" in malformed["properties"]["headers"]["x-dead-letter-reason"]
    assert malformed["properties"]["headers"]["x-original-queue"] == DEAD_LETTERS
    headers = kept[str(unknown.event_id)]["properties"]["headers"]
    assert "does not exist" in headers["x-dead-letter-reason"]
    assert headers["x-original-queue"] == DEAD_LETTERS
    assert await messages_of(management, DEAD_LETTERS, unknown.job_id) == []


async def test_a_late_dead_letter_never_fails_a_completed_job(
    dying_reports: None, fleet: Fleet, http: httpx.AsyncClient, management: Management
) -> None:
    url = fleet.url("reportservice")
    job_id = await submit(http, url, "annual", region="EU")
    done = await eventually(lambda: finished(http, url, job_id), timeout=90, message="the job did not end")
    assert done["status"] == "completed", done
    failed_before = await failed_count(http, fleet, "annual")
    dead_letters_before = await consumed(http, url, DEAD_LETTERS, "acked")

    # A copy of its message, dead-lettered late (a duplicate that crashed its consumer past the limit).
    late = GenerateReportJob(job_id=job_id, report_type="annual", parameters={"region": "EU"})
    await management.publish(
        DEAD_LETTERS,
        late.model_dump_json(),
        {**properties_of(late), "headers": {"x-first-death-reason": "delivery_limit"}},
    )
    await eventually(
        lambda: _consumed_above(http, url, DEAD_LETTERS, "acked", dead_letters_before),
        message="the late dead letter was not taken",
    )
    after = await job(http, url, job_id)
    assert (after["status"], after["reason"], after["report_hash"]) == ("completed", None, done["report_hash"])
    assert await failed_count(http, fleet, "annual") == failed_before
    assert await messages_of(management, KEPT_FOR_OPERATORS, job_id) == []
