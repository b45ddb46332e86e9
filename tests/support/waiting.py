"""Waiting for eventual consistency with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = 15.0,
    interval: float = 0.1,
    message: str = "condition not met",
) -> T:
    """Call `probe` until it returns something truthy (which is returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            last_error = None
            if last:
                return last
        except AssertionError as exc:
            last_error = exc
        await asyncio.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else f" (last value: {last!r})"
    raise AssertionError(f"{message} within {timeout:.0f}s{detail}")


async def stays(
    probe: Callable[[], Awaitable[bool]], *, duration: float, interval: float = 0.1, message: str = "changed"
) -> None:
    """Assert that `probe` keeps returning True for `duration` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert await probe(), message
        await asyncio.sleep(interval)
