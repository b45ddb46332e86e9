"""How the synchronous fleet reaches the next service: the topology's routes as calls, the answers they map to.

The services at the other end are httpx's in-memory transport here (no network): what is tested is which
calls a publish makes, in which order, and what each answer means to the caller. The calls themselves,
over real HTTP between real services, are tests/e2e_sync's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest

from common.calls import DEADLINE_HEADER, CallFailed, DirectCalls
from common.database import Database, service_metadata
from common.events import Event, PaymentInitiated, ProductUpdated, UserRegistered
from common.settings import ServiceSettings
from common.topology import PAYMENT_INITIATED

Responder = Callable[[httpx.Request], httpx.Response]


def settings(service: str) -> ServiceSettings:
    return ServiceSettings(service_name=service, fleet_mode="sync", call_timeout_s=5.0)


@pytest.fixture
def calls_made() -> list[httpx.Request]:
    return []


async def direct_calls(service: str, respond: Responder, made: list[httpx.Request]) -> AsyncIterator[DirectCalls]:
    def record(request: httpx.Request) -> httpx.Response:
        made.append(request)
        return respond(request)

    # A pool that is never opened: deliver() needs no database.
    unopened = Database(settings(service), service_metadata(service))
    calls = DirectCalls(settings(service), unopened, transport=httpx.MockTransport(record))
    await calls.open()
    try:
        yield calls
    finally:
        await calls.close()


def product_updated() -> ProductUpdated:
    return ProductUpdated(product_id=1, name="Laptop", stock=3, product_version=2, updated_at=datetime.now(UTC))


async def deliver(service: str, event: Event, respond: Responder, made: list[httpx.Request]) -> None:
    async for calls in direct_calls(service, respond, made):
        await calls.deliver([event])


async def test_a_fanout_event_calls_every_subscriber_in_the_maps_order(calls_made: list[httpx.Request]) -> None:
    await deliver("productservice", product_updated(), lambda _: httpx.Response(200), calls_made)
    assert [request.url.path for request in calls_made] == [
        "/events/search_product_updates_queue",
        "/events/cache_product_updates_queue",
        "/events/analytics_product_updates_queue",
    ]
    assert [request.url.port for request in calls_made] == [8008, 8009, 8006]  # the synchronous fleet's ports
    assert json.loads(calls_made[0].content)["product_id"] == 1


async def test_each_call_carries_what_is_left_of_the_deadline(calls_made: list[httpx.Request]) -> None:
    await deliver(
        "userservice", UserRegistered(user_id=1, email="a@example.com"), lambda _: httpx.Response(200), calls_made
    )
    [call] = calls_made
    assert call.url.path == "/events/user_registered_queue"
    assert 0 < int(call.headers[DEADLINE_HEADER]) < 5000


async def test_a_queue_of_the_service_itself_is_handled_in_process(calls_made: list[httpx.Request]) -> None:
    handled: list[Event] = []

    async def handle(event: Event) -> bool:
        handled.append(event)
        return True

    payment = PaymentInitiated(payment_id="pay_1", amount="1.00", currency="USD")
    async for calls in direct_calls("paymentservice", lambda _: httpx.Response(200), calls_made):
        calls.serve_locally(PAYMENT_INITIATED, handle)
        await calls.deliver([payment])
    assert handled == [payment]
    assert calls_made == []


@pytest.mark.parametrize(
    ("answer", "status_code", "detail"),
    [
        (httpx.Response(500, json={"detail": "boom"}), 502, "emailservice answered 500 to UserRegistered: boom"),
        (httpx.Response(422, json={"detail": "refused"}), 502, "emailservice answered 422 to UserRegistered: refused"),
        (httpx.Response(503, json={"detail": "db down"}), 503, "emailservice answered 503 to UserRegistered: db down"),
        (httpx.Response(504, text="late"), 504, "emailservice answered 504 to UserRegistered: late"),
    ],
)
async def test_a_failed_answer_fails_the_caller_with_the_chain(
    calls_made: list[httpx.Request], answer: httpx.Response, status_code: int, detail: str
) -> None:
    with pytest.raises(CallFailed) as failed:
        await deliver("userservice", UserRegistered(user_id=1, email="a@example.com"), lambda _: answer, calls_made)
    assert (failed.value.status_code, failed.value.detail) == (status_code, detail)


@pytest.mark.parametrize(
    ("error", "status_code", "detail"),
    [
        (httpx.ConnectError("refused"), 503, "emailservice is unreachable: ConnectError"),
        (httpx.ReadTimeout("slow"), 504, "emailservice did not answer within"),
    ],
)
async def test_no_answer_at_all_is_a_503_or_a_504(
    calls_made: list[httpx.Request], error: Exception, status_code: int, detail: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(CallFailed) as failed:
        await deliver("userservice", UserRegistered(user_id=1, email="a@example.com"), fail, calls_made)
    assert failed.value.status_code == status_code
    assert failed.value.detail.startswith(detail)


async def test_a_failed_subscriber_stops_the_fanout(calls_made: list[httpx.Request]) -> None:
    def search_fails(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500 if "search" in request.url.path else 200, json={"detail": "index broken"})

    with pytest.raises(CallFailed, match="searchservice answered 500"):
        await deliver("productservice", product_updated(), search_fails, calls_made)
    assert len(calls_made) == 1  # cache and analytics were not called
