from __future__ import annotations

import pytest

from paymentservice.gateway import approves, new_payment_id, order_key, stable_fraction


def test_overrides_win_over_the_policy() -> None:
    assert approves("any", "succeed", failure_rate=1.0)
    assert not approves("any", "fail", failure_rate=0.0)


@pytest.mark.parametrize(("rate", "approved"), [(0.0, 1000), (1.0, 0)])
def test_the_extremes_of_the_policy_are_absolute(rate: float, approved: int) -> None:
    assert sum(approves(order_key(n), None, rate) for n in range(1000)) == approved


def test_a_partial_rate_declines_about_that_share_deterministically() -> None:
    keys = [order_key(n) for n in range(10_000)]
    declined = [key for key in keys if not approves(key, None, 0.3)]
    assert 2_700 < len(declined) < 3_300
    assert declined == [key for key in keys if not approves(key, None, 0.3)], "same key, same answer"
    # A higher rate declines a superset: raising the rate never approves a payment it declined.
    assert set(declined) <= {key for key in keys if not approves(key, None, 0.6)}


def test_stable_fraction_is_in_the_unit_interval() -> None:
    values = [stable_fraction(f"k{n}") for n in range(1000)]
    assert all(0 <= value < 1 for value in values)
    assert len(set(values)) == 1000


def test_payment_ids_look_like_the_design_docs() -> None:
    first, second = new_payment_id(), new_payment_id()
    assert first.startswith("pay_")
    assert first != second
