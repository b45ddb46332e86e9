from __future__ import annotations

import functools

import pytest

from common.consumer import MessageContext, handled_event_type, retry_delay_s
from common.events import OrderCreated, UserRegistered
from common.settings import ServiceSettings


def test_retry_delay_grows_and_is_capped() -> None:
    settings = ServiceSettings(retry_base_delay_s=0.5, retry_backoff_factor=4, retry_max_delay_s=10)
    delays = [retry_delay_s(settings, attempt) for attempt in range(1, 6)]
    assert delays == [0.5, 2.0, 8.0, 10.0, 10.0]


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
