"""The fault reconciliation's rule for saga timeouts (tests/faults/reconcile.py), as pure logic: an
order may end in `timeout` only if a saga participant was down for longer than SAGA_TIMEOUT_S while
it lived; any other timeout is a lost saga message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.faults.reconcile import Findings, SagaTimeouts, _check_order
from tests.support.fleet import Outage

SAGA_TIMEOUT_S = 30.0
CREATED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
# The timeout watch fails an order up to its check interval after its deadline.
TIMED_OUT = CREATED + timedelta(seconds=SAGA_TIMEOUT_S + 0.4)


def at(seconds: float) -> datetime:
    return CREATED + timedelta(seconds=seconds)


def order(
    status: str = "failed",
    reason: str | None = "timeout",
    behaviour: str = "succeed",
    ended_at: datetime = TIMED_OUT,
) -> dict[str, Any]:
    return {
        "status": status,
        "failure_reason": reason,
        "payment_behaviour": behaviour,
        "created_at": CREATED,
        "updated_at": ended_at,
    }


def check(row: dict[str, Any], *outages: Outage, charges: int = 0) -> Findings:
    findings = Findings()
    _check_order(row, charges, "order test-1 (accepted)", findings, SagaTimeouts(SAGA_TIMEOUT_S, outages))
    return findings


def test_a_timeout_inside_a_long_outage_of_a_participant_passes() -> None:
    for participant in ("paymentservice", "inventoryservice"):
        findings = check(order(), Outage(participant, at(-5), at(45)))
        assert findings.problems == [], participant
        assert findings.lost_count == 0


def test_a_timeout_with_no_outage_is_a_lost_saga_message() -> None:
    findings = check(order())
    assert findings.lost_count == 1
    [problem] = findings.problems
    assert "timed out after 30.4 s" in problem, problem
    assert "a saga message was lost" in problem, problem


def test_a_timeout_is_a_loss_for_a_payment_set_to_fail_too() -> None:
    assert check(order(behaviour="fail")).lost_count == 1
    assert check(order(behaviour="fail"), Outage("paymentservice", at(-1), at(40))).problems == []


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(Outage("paymentservice", at(5), at(20)), id="participant-down-shorter-than-the-timeout"),
        pytest.param(Outage("emailservice", at(-5), at(45)), id="long-outage-of-a-non-participant"),
        pytest.param(Outage("orderservice", at(-5), at(45)), id="long-outage-of-the-order-service-itself"),
        pytest.param(Outage("paymentservice", at(-100), at(-1)), id="long-outage-before-the-order"),
        pytest.param(Outage("paymentservice", at(31), at(90)), id="long-outage-after-the-timeout"),
        pytest.param(Outage("paymentservice", at(20), at(90)), id="long-outage-begun-late-in-the-order-s-life"),
    ],
)
def test_a_timeout_that_no_long_enough_outage_during_the_order_explains_is_a_loss(outage: Outage) -> None:
    assert check(order(), outage).lost_count == 1


def test_an_outage_still_going_on_counts_until_the_order_ended() -> None:
    assert check(order(), Outage("inventoryservice", at(-2), None)).problems == []


def test_outages_of_one_participant_add_up_and_overlapping_records_count_once() -> None:
    # Stopped twice during the order's life, 16 s each time: 32 s down, more than the timeout.
    twice = (Outage("paymentservice", at(-1), at(15)), Outage("paymentservice", at(15.2), at(31.2)))
    assert check(order(), *twice).problems == []
    # The same 20 s recorded twice (a stop, then a kill of the same process) is 20 s, not 40 s.
    overlapping = (Outage("paymentservice", at(2), at(22)), Outage("paymentservice", at(2.1), at(22)))
    assert check(order(), *overlapping).lost_count == 1
    # Different participants' downtimes are not added together: neither was down long enough.
    split = (Outage("paymentservice", at(-1), at(16)), Outage("inventoryservice", at(15), at(31)))
    assert check(order(), *split).lost_count == 1


def test_orders_that_ended_as_their_payment_was_set_are_not_checked_against_outages() -> None:
    assert check(order("completed", None, "succeed"), charges=1).problems == []
    assert check(order("failed", "payment_declined", "fail")).problems == []


def test_a_failure_other_than_a_timeout_is_inconsistent_whatever_was_down() -> None:
    findings = check(order("failed", "insufficient_stock"), Outage("paymentservice", at(-5), at(45)))
    assert findings.lost_count == 0
    assert len(findings.inconsistent) == 1
