"""The six scenarios over request/response: each answer comes once its effects are there, everywhere.

Every test reads the effect right after the answer, without waiting: in the synchronous fleet the
answer is the proof that each service down the chain has done its part.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import pytest

from tests.support.fleet import Fleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


def unique_email() -> str:
    return f"sync-{secrets.token_hex(6)}@example.com"


async def get_json(http: httpx.AsyncClient, url: str, **params: Any) -> Any:
    response = await http.get(url, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def create_product(http: httpx.AsyncClient, fleet: Fleet, stock: int) -> dict[str, Any]:
    name = f"zq{secrets.token_hex(5)}"
    response = await http.post(
        f"{fleet.url('productservice')}/products",
        json={"name": name, "description": "sync test", "price": "10.00", "stock": stock},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_register_answers_201_once_the_welcome_email_is_recorded(fleet: Fleet, http: httpx.AsyncClient) -> None:
    email = unique_email()
    response = await http.post(f"{fleet.url('userservice')}/register", json={"email": email})
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["email"] == email
    emails = await get_json(http, f"{fleet.url('emailservice')}/emails", user_id=user["id"])
    assert [sent["recipient"] for sent in emails] == [email]
    again = await http.post(f"{fleet.url('userservice')}/register", json={"email": email})
    assert again.status_code == 409, again.text


async def test_payment_answers_with_the_gateways_outcome(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.post(
        f"{fleet.url('paymentservice')}/process_payment", json={"amount": 25.5, "currency": "EUR"}
    )
    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["status"] == "completed"
    assert payment["transaction_id"]
    stored = await get_json(http, f"{fleet.url('paymentservice')}/payments/{payment['payment_id']}")
    assert stored["status"] == "completed"
    assert stored["transaction_id"] == payment["transaction_id"]


async def test_a_declined_payment_is_a_402_with_the_reason(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.post(
        f"{fleet.url('paymentservice')}/process_payment",
        json={"amount": 5, "currency": "USD", "payment_behaviour": "fail"},
    )
    assert response.status_code == 402, response.text
    assert "failed" in response.json()["detail"]


async def test_product_update_answers_once_search_cache_and_analytics_applied_it(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    product = await create_product(http, fleet, stock=5)
    renamed = f"zq{secrets.token_hex(5)}"
    response = await http.put(f"{fleet.url('productservice')}/products/{product['id']}", json={"name": renamed})
    assert response.status_code == 200, response.text
    hits = await get_json(http, f"{fleet.url('searchservice')}/search", q=renamed)
    assert [hit["product_id"] for hit in hits["results"]] == [product["id"]]
    cached = await get_json(http, f"{fleet.url('cacheservice')}/cache/products/{product['id']}")
    assert cached["name"] == renamed
    counted = await get_json(http, f"{fleet.url('analyticsservice')}/analytics/product_updates/{product['id']}")
    assert counted["updates"] == 2  # the creation and the change


async def test_report_answers_200_with_the_hash_once_the_workers_are_done(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    response = await http.post(f"{fleet.url('reportservice')}/generate_report", json={"report_type": "daily"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "completed"
    assert job["progress"] == 100
    assert job["report_hash"]
    stored = await get_json(http, f"{fleet.url('reportservice')}/jobs/{job['job_id']}")
    assert stored["report_hash"] == job["report_hash"]


async def stock_of(http: httpx.AsyncClient, fleet: Fleet, product_id: int) -> dict[str, Any]:
    return dict(await get_json(http, f"{fleet.url('inventoryservice')}/inventory/{product_id}"))


async def test_order_answers_201_with_the_completed_saga(fleet: Fleet, http: httpx.AsyncClient) -> None:
    product = await create_product(http, fleet, stock=3)
    response = await http.post(
        f"{fleet.url('orderservice')}/create_order",
        json={"product_id": product["id"], "quantity": 2, "payment_behaviour": "succeed"},
    )
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "completed"
    assert {"stock_reserved", "payment_completed"} <= {step["step"] for step in order["timeline"]}
    stock = await stock_of(http, fleet, product["id"])
    assert stock["available"] == 1
    payments = await get_json(http, f"{fleet.url('paymentservice')}/payments", order_id=order["id"])
    assert [payment["status"] for payment in payments] == ["completed"]


async def test_a_failed_payment_is_compensated_before_the_402(fleet: Fleet, http: httpx.AsyncClient) -> None:
    product = await create_product(http, fleet, stock=3)
    response = await http.post(
        f"{fleet.url('orderservice')}/create_order",
        json={"product_id": product["id"], "quantity": 2, "payment_behaviour": "fail"},
    )
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["order"]["status"] == "failed"
    assert body["order"]["failure_reason"] == "payment_declined"
    assert "payment_declined" in body["detail"]
    assert (await stock_of(http, fleet, product["id"]))["available"] == 3  # released


async def test_an_order_beyond_the_stock_is_a_409_and_charges_nothing(fleet: Fleet, http: httpx.AsyncClient) -> None:
    product = await create_product(http, fleet, stock=1)
    response = await http.post(
        f"{fleet.url('orderservice')}/create_order",
        json={"product_id": product["id"], "quantity": 5, "payment_behaviour": "succeed"},
    )
    assert response.status_code == 409, response.text
    order = response.json()["order"]
    assert order["failure_reason"] == "insufficient_stock"
    assert await get_json(http, f"{fleet.url('paymentservice')}/payments", order_id=order["id"]) == []


async def test_a_click_is_counted_when_the_answer_comes(fleet: Fleet, http: httpx.AsyncClient) -> None:
    page = f"sync-{secrets.token_hex(4)}"
    for _ in range(3):
        response = await http.post(f"{fleet.url('analyticsservice')}/track_click", json={"user_id": 7, "page": page})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "tracked"
    clicks = await get_json(http, f"{fleet.url('analyticsservice')}/analytics/clicks", page=page)
    assert clicks["clicks"] == 3


async def test_the_seeded_catalogue_reaches_every_service_that_follows_it(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """Announced in the background at startup, until inventory, search and cache all took it."""

    async def seeded_everywhere() -> bool:
        stock = await http.get(f"{fleet.url('inventoryservice')}/inventory/1")
        cached = await http.get(f"{fleet.url('cacheservice')}/cache/products/1")
        return stock.status_code == 200 and cached.status_code == 200

    assert await eventually(seeded_everywhere, timeout=30.0)


async def test_an_event_delivered_twice_is_applied_once(fleet: Fleet, http: httpx.AsyncClient) -> None:
    page = f"sync-{secrets.token_hex(4)}"
    event = {
        "event_id": str(uuid.uuid4()),
        "event_type": "ClicksTracked",
        "clicks": [{"user_id": 9, "page": page, "clicked_at": "2026-12-04T12:00:00Z"}],
    }
    url = f"{fleet.url('analyticsservice')}/events/click_tracked_queue"
    first = await http.post(url, json=event)
    assert first.status_code == 200, first.text
    assert first.json() == {"outcome": "handled"}
    second = await http.post(url, json=event)
    assert second.status_code == 200, second.text
    assert second.json() == {"outcome": "duplicate"}
    clicks = await get_json(http, f"{fleet.url('analyticsservice')}/analytics/clicks", page=page)
    assert clicks["clicks"] == 1


async def test_a_call_that_is_not_a_valid_event_is_a_422(fleet: Fleet, http: httpx.AsyncClient) -> None:
    url = f"{fleet.url('emailservice')}/events/user_registered_queue"
    response = await http.post(url, json={"event_type": "UserRegistered", "user_id": "not a number"})
    assert response.status_code == 422, response.text
    assert "not a valid UserRegistered" in response.json()["detail"]
    malformed = await http.post(url, content=b"\xff not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422, malformed.text


async def test_the_read_endpoints_answer_as_in_the_asynchronous_fleet(fleet: Fleet, http: httpx.AsyncClient) -> None:
    summary = await get_json(http, f"{fleet.url('analyticsservice')}/analytics/summary")
    assert {"clicks_total", "clicks_by_page", "pages_total", "product_updates_total"} <= set(summary)
    assert (await http.get(f"{fleet.url('userservice')}/users/999999")).status_code == 404
    assert (await http.get(f"{fleet.url('orderservice')}/orders/999999")).status_code == 404


async def test_the_synchronous_fleet_needs_no_broker(fleet: Fleet, http: httpx.AsyncClient) -> None:
    for name in fleet.services:
        ready = await get_json(http, f"{fleet.url(name)}/ready")
        assert ready["checks"] == {"database": "ok"}, (name, ready)
