"""The correlation id of the work in progress: an HTTP request, or the message being handled.

A request's id (from `X-Correlation-ID`, or a new one) is copied into every event the request
causes, and a consumer re-enters the id of the event it handles, so following one id across
the fleet's logs shows a whole flow, saga steps included.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

CORRELATION_HEADER = "X-Correlation-ID"
MAX_CORRELATION_ID_LENGTH = 128

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
event_id_var: ContextVar[str | None] = ContextVar("event_id", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str:
    """The id of the work in progress, or a fresh one for work that starts here."""
    return correlation_id_var.get() or new_correlation_id()


def sanitize_correlation_id(raw: str | None) -> str:
    """Accept a caller's id if it is printable and short; otherwise start a new one."""
    if raw and len(raw) <= MAX_CORRELATION_ID_LENGTH and raw.isprintable() and raw.strip() == raw:
        return raw
    return new_correlation_id()


@contextmanager
def bound(correlation_id: str, event_id: str | None = None) -> Iterator[None]:
    correlation_token = correlation_id_var.set(correlation_id)
    event_token = event_id_var.set(event_id)
    try:
        yield
    finally:
        event_id_var.reset(event_token)
        correlation_id_var.reset(correlation_token)
