"""The worker processes that do the hashing, opened and closed by the service's lifespan.

Threads would not do: SHA-256 over small inputs holds the GIL, so a hashing thread stalls the
event loop that serves HTTP. Worker processes leave the service's own process free to answer.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from common.runtime import Runtime
from reportservice.jobs import JobStore
from reportservice.settings import Settings
from reportservice.work import prepare_worker, worker_pid

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReportWorkers:
    """A pool of `size` worker processes. If one of them dies (killed, out of memory), the pool is
    broken for every job on it: it is replaced, and those jobs are retried by the consumer."""

    def __init__(self, size: int, niceness: int) -> None:
        self.size = size
        self._niceness = niceness
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # `spawn`: fresh interpreters, nothing inherited from the event loop's process (sockets, threads).
        return ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=prepare_worker,
            initargs=(self._niceness, os.getpid()),
        )

    async def start(self) -> list[int]:
        """Start every worker now, rather than on the first jobs; return their process ids.
        (The pool starts a process per submitted task while none is idle, so `size` tasks start all.)"""
        loop = asyncio.get_running_loop()
        pool = self._pool
        return list(await asyncio.gather(*(loop.run_in_executor(pool, worker_pid) for _ in range(self.size))))

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
        except BrokenProcessPool:
            if self._pool is pool:  # the first of its jobs to notice replaces it; the others just retry
                log.error("a report worker process died; replacing the worker pool (its jobs are retried)")
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                pids = await self.start()
                log.info("%d new report worker processes ready", len(pids), extra={"worker_pids": pids})
            raise

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


@asynccontextmanager
async def report_workers(runtime: Runtime) -> AsyncIterator[None]:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    workers = ReportWorkers(settings.report_workers, settings.report_worker_niceness)
    try:
        pids = await workers.start()
        log.info("%d report worker processes ready", len(pids), extra={"worker_pids": pids})
        runtime.resources.add(workers)
        runtime.resources.add(JobStore(runtime.database, worker=runtime.settings.instance_name))
        yield
    finally:
        await workers.close()
