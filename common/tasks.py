"""A service's long-running background tasks (the outbox dispatcher and relay, batch flushers, the
saga's timeout watch, ...), watched: a task that dies is logged, counted in
`background_task_restarts_total`, reported by `/ready` until it runs again, and started again after a
growing delay. Nothing such a task owns is lost meanwhile: the outbox's rows are in the database, and a
batch consumer's deliveries stay unacknowledged until its flusher is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from common import metrics

log = logging.getLogger(__name__)

TaskBody = Callable[[], Coroutine[Any, Any, None]]

FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
# A task that ran this long before dying starts again after the first delay, not a grown one.
HEALTHY_RUN_S = 60.0


class BackgroundTasks:
    def __init__(self) -> None:
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, str] = {}

    def start(self, name: str, body: TaskBody) -> str:
        """Run `body()` until the service stops, starting it again whenever it raises or returns; return
        the name it runs under (`name`, or `name#2`, ... when two tasks of one name run, such as two
        consumers of one queue)."""
        unique, copy = name, 1
        while unique in self._watchers:
            copy += 1
            unique = f"{name}#{copy}"
        metrics.BACKGROUND_TASK_RESTARTS.labels(task=unique)
        self._watchers[unique] = asyncio.create_task(self._watch(unique, body), name=f"watch-{unique}")
        return unique

    def problems(self) -> dict[str, str]:
        """Tasks that are not running right now, with why."""
        return dict(self._down)

    async def _watch(self, name: str, body: TaskBody) -> None:
        delay = FIRST_RESTART_DELAY_S
        while True:
            started = time.monotonic()
            try:
                await body()
                reason = "returned"
                log.error("background task %s returned; starting it again", name)
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise  # the supervisor is stopping this task
                # A cancellation the body let escape (say, of an inner publish): not a stop, a death.
                reason = "CancelledError"
                log.error("background task %s was cancelled from inside; starting it again", name, exc_info=exc)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("background task %s died; starting it again", name)
            if time.monotonic() - started >= HEALTHY_RUN_S:
                delay = FIRST_RESTART_DELAY_S
            self._down[name] = f"restarting in {delay:g}s after {reason}"[:300]
            metrics.BACKGROUND_TASK_RESTARTS.labels(task=name).inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            self._down.pop(name, None)

    async def stop(self, name: str) -> None:
        watcher = self._watchers.pop(name, None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._down.pop(name, None)

    async def close(self) -> None:
        for name in list(self._watchers):
            await self.stop(name)
