from __future__ import annotations

import functools
from collections.abc import Sequence

import pytest

from common.consumer import (
    BatchContext,
    Batched,
    MessageContext,
    handled_batch_event_type,
    handled_event_type,
    retry_delay_s,
    retry_delays_s,
)
from common.events import OrderCreated, UserRegistered
from common.settings import ServiceSettings


def test_retry_delay_grows_and_is_capped() -> None:
    settings = ServiceSettings(retry_base_delay_s=0.5, retry_backoff_factor=4, retry_max_delay_s=10)
    delays = [retry_delay_s(settings, attempt) for attempt in range(1, 6)]
    assert delays == [0.5, 2.0, 8.0, 10.0, 10.0]


def test_a_consumer_declares_one_retry_queue_per_delay_it_can_ask_for() -> None:
    settings = ServiceSettings(
        retry_base_delay_s=0.5, retry_backoff_factor=4, retry_max_delay_s=10, max_delivery_attempts=5
    )
    assert retry_delays_s(settings) == {0.5, 2.0, 8.0, 10.0, settings.dependency_retry_delay_s}
    assert retry_delays_s(settings.model_copy(update={"max_delivery_attempts": 1})) == {
        settings.dependency_retry_delay_s
    }


async def handle_registration(event: UserRegistered, ctx: MessageContext[UserRegistered]) -> None:
    return None


async def handle_with_extra(event: OrderCreated, ctx: MessageContext[OrderCreated], *, flag: bool) -> None:
    return None


async def untyped(event, ctx) -> None:
    return None


def test_event_type_comes_from_the_handler_annotation() -> None:
    assert handled_event_type(handle_registration) is UserRegistered
    assert handled_event_type(functools.partial(handle_with_extra, flag=True)) is OrderCreated


def test_untyped_handlers_are_refused() -> None:
    with pytest.raises(TypeError, match="annotate"):
        handled_event_type(untyped)


async def count_batch(events: Sequence[UserRegistered], ctx: BatchContext[UserRegistered]) -> None:
    return None


async def batch_of_lists(events: list[OrderCreated], ctx: BatchContext[OrderCreated]) -> None:
    return None


def test_batch_handlers_declare_a_sequence_of_events() -> None:
    assert handled_batch_event_type(count_batch) is UserRegistered
    assert handled_batch_event_type(batch_of_lists) is OrderCreated
    with pytest.raises(TypeError, match=r"Sequence\["):
        handled_batch_event_type(handle_registration)
    with pytest.raises(TypeError, match="annotate"):
        handled_event_type(count_batch)


def test_batches_hold_at_least_one_message() -> None:
    assert Batched(count_batch, max_size=1, max_wait_s=0).max_size == 1
    with pytest.raises(ValueError, match="at least one"):
        Batched(count_batch, max_size=0, max_wait_s=0.1)
