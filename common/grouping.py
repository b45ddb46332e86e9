"""Group commit: many callers' items in one durable write, each caller answered once its item is durable.

A write that costs the same for one item as for a hundred (a confirmed publish, a transaction) caps
a service at one write per item. Here the items that arrive while a write is under way wait for it
and go out together in the next one: an idle service writes each item at once, as before, and a busy
one writes bigger groups, never more than one write at a time. No item is answered before its write
succeeded, and a failed write fails every caller in its group.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Waiting(Generic[T]):
    item: T
    answer: asyncio.Future[None]
    # The caller's context (its correlation id, its deadline): a group is written in its first caller's.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[list[T]], Awaitable[None]], *, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("a group holds at least one item")
        self._write = write
        self._max_items = max_items
        self._waiting: list[_Waiting[T]] = []
        self._writing: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    async def submit(self, item: T) -> None:
        """Return once `item` is durable; raise what the write of its group raised."""
        if self._closed:
            raise RuntimeError("the group commit is closed")
        waiting = _Waiting(item, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if self._writing is None:
            self._write_next_group()
        await waiting.answer

    async def close(self) -> None:
        """Take no more items; return once every item taken has its answer."""
        self._closed = True
        await self._idle.wait()

    def _write_next_group(self) -> None:
        if not self._waiting:
            self._writing = None
            self._idle.set()
            return
        self._idle.clear()
        group = self._waiting[: self._max_items]
        del self._waiting[: self._max_items]
        self._writing = asyncio.create_task(self._write_group(group), name="group-commit", context=group[0].context)
        self._writing.add_done_callback(lambda _: self._write_next_group())

    async def _write_group(self, group: list[_Waiting[T]]) -> None:
        try:
            await self._write([waiting.item for waiting in group])
        except asyncio.CancelledError:  # the loop is going away: no caller may wait for ever
            for waiting in group:
                waiting.answer.cancel()
            raise
        except Exception as exc:
            for waiting in group:
                if not waiting.answer.done():  # a caller that gave up has cancelled its answer
                    waiting.answer.set_exception(exc)
        else:
            for waiting in group:
                if not waiting.answer.done():
                    waiting.answer.set_result(None)
