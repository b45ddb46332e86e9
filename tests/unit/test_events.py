from __future__ import annotations

import json
import uuid
from datetime import UTC

import pytest
from pydantic import ValidationError

from common import correlation
from common.events import ALL_EVENTS, EVENTS_BY_TYPE, PaymentFailed, ProductUpdated, UserRegistered


def test_envelope_is_filled_per_instance() -> None:
    first = UserRegistered(user_id=1, email="a@example.com")
    second = UserRegistered(user_id=2, email="b@example.com")
    assert isinstance(first.event_id, uuid.UUID)
    assert first.event_id != second.event_id
    assert first.occurred_at.tzinfo is UTC
    assert first.occurred_at <= second.occurred_at
    assert first.event_type == "UserRegistered"
    assert first.version == 1
    assert first.correlation_id
    assert first.correlation_id != second.correlation_id


def test_events_inherit_the_correlation_id_of_the_work_in_progress() -> None:
    with correlation.bound("request-7"):
        event = UserRegistered(user_id=1, email="a@example.com")
    assert event.correlation_id == "request-7"


def test_round_trip_through_json() -> None:
    event = ProductUpdated(
        product_id=1, name="Laptop", stock=75, price="999.90", product_version=3, updated_at="2026-01-01T00:00:00Z"
    )
    assert ProductUpdated.model_validate_json(event.model_dump_json()) == event


def test_consumers_ignore_fields_they_do_not_know() -> None:
    payload = json.loads(UserRegistered(user_id=1, email="a@example.com").model_dump_json())
    payload["newsletter"] = True  # a newer publisher added a field
    assert UserRegistered.model_validate(payload).user_id == 1


def test_a_newer_version_than_understood_is_refused() -> None:
    payload = json.loads(UserRegistered(user_id=1, email="a@example.com").model_dump_json())
    payload["version"] = 2
    with pytest.raises(ValidationError, match="newer than this consumer understands"):
        UserRegistered.model_validate(payload)


def test_event_type_must_match_the_schema() -> None:
    payload = json.loads(UserRegistered(user_id=1, email="a@example.com").model_dump_json())
    payload["event_type"] = "OrderCreated"
    with pytest.raises(ValidationError):
        UserRegistered.model_validate(payload)


def test_payment_failure_carries_what_compensation_needs() -> None:
    fields = PaymentFailed.model_fields
    assert {"order_id", "product_id", "quantity", "reason"} <= set(fields)
    with pytest.raises(ValidationError):
        PaymentFailed(payment_id="p", order_id=1, product_id=1, quantity=0, reason="declined")


def test_event_types_are_unique_and_registered() -> None:
    assert len(EVENTS_BY_TYPE) == len(ALL_EVENTS)
    for name, event_class in EVENTS_BY_TYPE.items():
        assert event_class.type_name() == name == event_class.__name__
