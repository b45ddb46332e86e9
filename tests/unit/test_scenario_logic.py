"""Pure logic of Scenarios 3, 4 and 6: request validation, search patterns, the report hash chain."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest
from pydantic import ValidationError

from analyticsservice.api import ClickRequest
from productservice.api import ProductChange, ProductCreate
from productservice.catalogue import SEED_PRODUCTS
from reportservice.api import ReportRequest
from reportservice.work import ReportFailed, hash_for, seed_digest
from searchservice.api import escape_like


def test_like_patterns_match_text_literally() -> None:
    assert escape_like("50%_off\\now") == "50\\%\\_off\\\\now"
    assert escape_like("laptop") == "laptop"


def test_a_product_change_needs_something_to_change() -> None:
    with pytest.raises(ValidationError, match="at least one of"):
        ProductChange.model_validate({})
    with pytest.raises(ValidationError, match="name cannot be null"):
        ProductChange.model_validate({"name": None})
    change = ProductChange.model_validate({"name": "  Updated Laptop ", "description": None})
    assert change.model_dump(exclude_unset=True) == {"name": "Updated Laptop", "description": None}


def test_product_fields_are_bounded() -> None:
    assert ProductCreate.model_validate({"name": "Pen"}).stock == 0
    assert ProductCreate.model_validate({"name": "Pen", "price": "1.50"}).price == Decimal("1.50")
    for bad in ({"name": "Pen", "stock": -1}, {"name": "Pen", "price": "0"}, {"name": "Pen", "price": "1.234"}):
        with pytest.raises(ValidationError):
            ProductCreate.model_validate(bad)


def test_seed_products_are_one_to_three() -> None:
    assert [seed.id for seed in SEED_PRODUCTS] == [1, 2, 3]
    assert all(seed.stock > 0 and seed.price > 0 for seed in SEED_PRODUCTS)


def test_clicks_are_validated() -> None:
    assert ClickRequest.model_validate({"user_id": 123, "page": " homepage "}).page == "homepage"
    for bad in ({"user_id": 0, "page": "x"}, {"user_id": 1, "page": ""}, {"user_id": 1, "page": "x", "extra": 1}):
        with pytest.raises(ValidationError):
            ClickRequest.model_validate(bad)


def test_report_requests_are_validated() -> None:
    assert ReportRequest.model_validate({"report_type": "monthly"}).parameters == {}
    with pytest.raises(ValidationError, match="monthly"):
        ReportRequest.model_validate({"report_type": "hourly"})
    with pytest.raises(ValidationError, match="4096 bytes"):
        ReportRequest.model_validate({"report_type": "daily", "parameters": {"blob": "x" * 5000}})


def test_seed_digest_depends_on_the_job_only() -> None:
    first = seed_digest("job_1", "monthly", {"a": 1, "b": 2})
    assert first == seed_digest("job_1", "monthly", {"b": 2, "a": 1})
    assert first != seed_digest("job_2", "monthly", {"a": 1, "b": 2})
    assert len(first) == 32


def test_the_report_hash_is_a_sha256_chain() -> None:
    seed = seed_digest("job_1", "daily", {})
    assert hash_for(seed, 0) == seed
    result = hash_for(seed, 0.01)
    digest = seed
    for _ in range(1_000_000):  # the chain is extended in runs of 1000 rounds
        for _ in range(1000):
            digest = hashlib.sha256(digest).digest()
        if digest == result:
            break
    assert digest == result


def test_a_report_failure_carries_its_reason() -> None:
    with pytest.raises(ReportFailed, match="ledger missing"):
        hash_for(b"x" * 32, 1.0, "ledger missing")
