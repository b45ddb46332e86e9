"""GroupCommit (common/grouping.py): the items that arrive during a write share the next one."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from common.grouping import GroupCommit

caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")


class Writes:
    """A write that waits until the test lets it finish, recording each group and its caller."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.callers: list[str] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, items: list[int]) -> None:
        self.groups.append(items)
        self.callers.append(caller.get())
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with


async def submit_as(groups: GroupCommit[int], item: int) -> None:
    caller.set(f"caller-{item}")
    await groups.submit(item)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_item_alone_is_written_at_once_and_answered_when_its_write_is_done() -> None:
    writes = Writes()
    groups = GroupCommit(writes, max_items=10)
    submitted = asyncio.create_task(groups.submit(1))
    await settle()

    assert writes.groups == [[1]]
    assert not submitted.done(), "answered before its write finished"
    writes.release.set()
    await asyncio.wait_for(submitted, 1)


async def test_items_that_arrive_during_a_write_share_the_next_one_in_their_first_callers_context() -> None:
    writes = Writes()
    groups = GroupCommit(writes, max_items=10)
    tasks = [asyncio.create_task(submit_as(groups, item)) for item in range(1, 6)]
    await settle()
    assert writes.groups == [[1]]

    writes.release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert writes.groups == [[1], [2, 3, 4, 5]]
    assert writes.callers == ["caller-1", "caller-2"]


async def test_a_group_holds_at_most_max_items() -> None:
    writes = Writes()
    groups = GroupCommit(writes, max_items=2)
    writes.release.set()
    await asyncio.gather(*(groups.submit(item) for item in range(1, 7)))

    assert writes.groups == [[1], [2, 3], [4, 5], [6]]


async def test_a_failed_write_fails_every_caller_of_its_group_and_no_other() -> None:
    writes = Writes()
    groups = GroupCommit(writes, max_items=10)
    first = asyncio.create_task(groups.submit(1))
    await settle()
    writes.fail_with = ConnectionError("no confirm")
    late = [asyncio.create_task(groups.submit(item)) for item in (2, 3)]
    await settle()
    writes.release.set()

    with pytest.raises(ConnectionError):
        await first
    for task in late:
        with pytest.raises(ConnectionError):
            await task
    writes.fail_with = None
    await asyncio.wait_for(groups.submit(4), 1)  # the next group is written as usual
    assert writes.groups == [[1], [2, 3], [4]]


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    writes = Writes()
    groups = GroupCommit(writes, max_items=10)
    first = asyncio.create_task(groups.submit(1))
    await settle()
    gives_up, stays = asyncio.create_task(groups.submit(2)), asyncio.create_task(groups.submit(3))
    await settle()
    gives_up.cancel()
    writes.release.set()

    await asyncio.wait_for(asyncio.gather(first, stays), 1)
    assert gives_up.cancelled()
    assert writes.groups == [[1], [2, 3]]  # what was taken is written all the same


async def test_close_waits_for_every_item_taken_and_refuses_new_ones() -> None:
    writes = Writes()
    groups = GroupCommit(writes, max_items=10)
    tasks = [asyncio.create_task(groups.submit(item)) for item in (1, 2)]
    await settle()
    closing = asyncio.create_task(groups.close())
    await settle()
    assert not closing.done(), "closed while items were still being written"

    writes.release.set()
    await asyncio.wait_for(closing, 1)
    assert all(task.done() and task.exception() is None for task in tasks)
    with pytest.raises(RuntimeError, match="closed"):
        await groups.submit(3)
