"""What a failing downstream service does to a caller in the synchronous fleet: a clear 503 or 504 with
the chain of services in the message, within the call timeout, and never a hang."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from tests.e2e_sync.test_sync_scenarios import create_product
from tests.support.fleet import Fleet

pytestmark = pytest.mark.e2e

SHORT_CALL_TIMEOUT_S = 1.5


async def register(http: httpx.AsyncClient, fleet: Fleet) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await http.post(
        f"{fleet.url('userservice')}/register", json={"email": f"down-{secrets.token_hex(6)}@example.com"}
    )
    return response, time.monotonic() - started


async def test_a_stopped_email_service_makes_register_a_503_naming_it(fleet: Fleet, http: httpx.AsyncClient) -> None:
    await fleet.stop("emailservice")
    try:
        response, took_s = await register(http, fleet)
        assert response.status_code == 503, response.text
        assert "emailservice is unreachable" in response.json()["detail"]
        assert took_s < 5.0
    finally:
        await fleet.start("emailservice")
    # Nothing queues the email that failed: once the service is back, registrations work again.
    response, _ = await register(http, fleet)
    assert response.status_code == 201, response.text


async def test_a_slow_email_service_makes_register_a_504_within_the_timeout(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    async with (
        fleet.reconfigured("emailservice", {"EMAIL_SEND_DELAY_S": str(SHORT_CALL_TIMEOUT_S * 3)}),
        fleet.reconfigured("userservice", {"CALL_TIMEOUT_S": str(SHORT_CALL_TIMEOUT_S)}),
    ):
        response, took_s = await register(http, fleet)
        assert response.status_code == 504, response.text
        assert "emailservice did not answer" in response.json()["detail"]
        assert took_s < SHORT_CALL_TIMEOUT_S + 1.0


async def test_a_failure_deep_in_the_saga_reaches_the_caller_with_its_chain(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    """order -> inventory -> payment: with payment down, inventory answers 503 and the order relays it."""
    product = await create_product(http, fleet, stock=2)
    await fleet.stop("paymentservice")
    try:
        started = time.monotonic()
        response = await http.post(
            f"{fleet.url('orderservice')}/create_order",
            json={"product_id": product["id"], "quantity": 1, "payment_behaviour": "succeed"},
        )
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "inventoryservice answered 503" in detail
        assert "paymentservice is unreachable" in detail
        assert time.monotonic() - started < 5.0
    finally:
        await fleet.start("paymentservice")
