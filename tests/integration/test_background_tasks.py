"""A service's background tasks under supervision (common/tasks.py): a task that dies is started again
after growing delays, counted in `background_task_restarts_total`, and reported by `/ready` until it
runs again. The real `BackgroundTasks`, and for /ready a real service from `create_service` (its
database, broker, outbox dispatcher and relay included); only the task body that dies is the test's.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import REGISTRY

from common.runtime import Runtime
from common.service import create_service
from common.tasks import FIRST_RESTART_DELAY_S, BackgroundTasks
from tests.integration.conftest import METADATA, core_settings
from tests.support.infra import Infra
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.integration

# asyncio may wake a sleeper up to its clock's resolution early; nothing else here is a timing margin.
EARLY_WAKE_S = 0.05


def restarts(task: str) -> float:
    return REGISTRY.get_sample_value("background_task_restarts_total", {"task": task}) or 0.0


class FlakyTask:
    """A long-running task body that dies at once (raises) while `failing` is set, and otherwise runs
    until cancelled, as a healthy dispatcher or flusher does. It notes when each run started."""

    def __init__(self, failures: int | None = None) -> None:
        self.starts: list[float] = []
        self.failing = True
        self._failures_left = failures

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        if self.failing and self._failures_left != 0:
            if self._failures_left is not None:
                self._failures_left -= 1
            raise RuntimeError(f"run {len(self.starts)} failed")
        await asyncio.Event().wait()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_a_task_that_dies_is_started_again_after_growing_delays_and_counted() -> None:
    tasks = BackgroundTasks()
    name = unique_name("flaky")
    body = FlakyTask(failures=3)
    seen_delays: list[str] = []
    try:
        assert tasks.start(name, body) == name
        assert restarts(name) == 0  # the series exists from the start, at zero

        # What the watcher says while the task is down names the delay it waits before the next start.
        for delay in ("0.5s", "1s", "2s"):

            async def reported(delay: str = delay) -> str | None:
                problem = tasks.problems().get(name)
                return problem if problem and problem.startswith(f"restarting in {delay} ") else None

            problem = await eventually(reported, interval=0.02, message=f"{name} never waited {delay}")
            assert "RuntimeError: run" in problem, problem
            seen_delays.append(delay)

        # The fourth run is healthy: it keeps running, nothing is reported, and the count stays at 3.
        async def running_healthy() -> bool:
            return len(body.starts) == 4 and tasks.problems() == {}

        await eventually(running_healthy, message="the task was not started a 4th time, or is still reported")
        await stays(running_healthy, duration=1.0, message="the healthy run did not stay up")
        assert restarts(name) == 3

        gaps = [later - earlier for earlier, later in itertools.pairwise(body.starts)]
        nominal_delays = (FIRST_RESTART_DELAY_S, 2 * FIRST_RESTART_DELAY_S, 4 * FIRST_RESTART_DELAY_S)
        for gap, nominal in zip(gaps, nominal_delays, strict=True):
            assert gap >= nominal - EARLY_WAKE_S, f"restarted after {gap:.2f}s, not after {nominal}s: {gaps}"
    finally:
        await tasks.close()
    assert seen_delays == ["0.5s", "1s", "2s"]
    assert tasks.problems() == {}


async def test_a_task_that_returns_is_started_again_too() -> None:
    tasks = BackgroundTasks()
    name = unique_name("returns")
    runs = 0

    async def returns_once() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            return  # a loop that ended: the task is not doing its work any more
        await asyncio.Event().wait()

    async def reported() -> str | None:
        return tasks.problems().get(name)

    async def running_again() -> bool:
        return runs == 2 and tasks.problems() == {}

    try:
        tasks.start(name, returns_once)
        problem = await eventually(reported, interval=0.02, message="the ended task was not reported")
        assert problem == f"restarting in {FIRST_RESTART_DELAY_S:g}s after returned"
        await eventually(running_again, message="the ended task was not started again")
        assert restarts(name) == 1
    finally:
        await tasks.close()


async def test_a_cancellation_escaping_from_inside_a_task_is_a_death_not_a_stop() -> None:
    tasks = BackgroundTasks()
    name = unique_name("inner-cancel")
    runs = 0

    async def lets_an_inner_cancellation_escape() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            inner = asyncio.create_task(asyncio.sleep(10))  # say, a publish cancelled by its library
            inner.cancel()
            await inner
        await asyncio.Event().wait()

    async def running_again() -> bool:
        return runs == 2 and tasks.problems() == {}

    try:
        tasks.start(name, lets_an_inner_cancellation_escape)
        await eventually(running_again, message="the task stopped for good after an inner cancellation")
        assert restarts(name) == 1
    finally:
        await tasks.close()


async def test_stopping_a_task_cancels_it_without_counting_a_restart() -> None:
    tasks = BackgroundTasks()
    name = unique_name("stopped")
    body = FlakyTask()
    body.failing = False
    tasks.start(name, body)

    async def started() -> bool:
        return len(body.starts) == 1

    await eventually(started, message="the task did not start")
    await tasks.stop(name)
    await asyncio.sleep(2 * FIRST_RESTART_DELAY_S)
    assert len(body.starts) == 1
    assert restarts(name) == 0
    assert tasks.problems() == {}


@asynccontextmanager
async def running_service(infra: Infra, task: str, body: FlakyTask) -> AsyncIterator[httpx.AsyncClient]:
    """A service built by `create_service` (the integration tests' own schema), whose lifespan also
    starts `body` as background task `task`, served in process while the block runs."""

    @asynccontextmanager
    async def flaky_task(runtime: Runtime) -> AsyncIterator[None]:
        runtime.tasks.start(task, body)
        try:
            yield
        finally:
            await runtime.tasks.stop(task)

    app = create_service(
        core_settings(infra),
        title="CoreTest",
        description="A service with a background task that dies",
        metadata=METADATA,
        lifespans=[flaky_task],
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://coretest") as client:
            yield client


async def test_ready_reports_a_dying_task_until_it_runs_again(infra: Infra, root_logging: None) -> None:
    name = unique_name("ready-flaky")
    body = FlakyTask()  # dies on every start until told otherwise
    async with running_service(infra, name, body) as client:
        # The first run died at startup: the service is not ready, and says which task and why.
        async def not_ready() -> dict[str, str] | None:
            response = await client.get("/ready")
            return response.json()["checks"] if response.status_code == 503 else None

        checks = await eventually(not_ready, message="/ready did not report the dying task")
        assert checks["broker"] == checks["database"] == "ok", checks
        assert checks[f"task {name}"].startswith("restarting in "), checks
        assert "RuntimeError: run" in checks[f"task {name}"], checks
        assert [key for key in checks if key.startswith("task ")] == [f"task {name}"], (
            "the service's own tasks (outbox dispatcher and relay, pruning) should be running"
        )

        # Still not ready while it keeps dying, with the delay growing and every death counted.
        async def died_three_times() -> bool:
            return len(body.starts) >= 3

        await eventually(died_three_times, message="the task was not restarted twice")
        response = await client.get("/ready")
        assert response.status_code == 503, response.text
        assert response.json()["status"] == "not ready"
        metrics = (await client.get("/metrics")).text
        [served] = re.findall(rf'^background_task_restarts_total{{task="{re.escape(name)}"}} (\S+)$', metrics, re.M)
        assert 3 <= float(served) <= restarts(name), metrics

        # The fault is gone: the next start runs, and /ready answers 200 again with no task listed.
        body.failing = False

        async def ready() -> dict[str, str] | None:
            response = await client.get("/ready")
            return response.json()["checks"] if response.status_code == 200 else None

        checks = await eventually(ready, timeout=30, message="/ready stayed 503 after the task recovered")
        assert checks == {"broker": "ok", "database": "ok"}
        assert restarts(name) == len(body.starts) - 1  # every start but the first followed a death
