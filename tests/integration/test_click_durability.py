"""POST /track_click when the broker's confirm is lost (analyticsservice/ingest.py).

A lost confirm does not say whether the broker took the message. The service then commits the
message (one click, or the clicks accepted together) to its outbox, with the same event id: whichever
copy reaches the consumer first is counted, the other dropped, so every click in it is answered 200
and counts once in either order. Only when the database cannot take it either is the answer 503.

The analytics service runs in process as it is built (`create_app`: its API, its batching click
consumer, its outbox, its database tables and the broker of this test run). Only its broker client is
a subclass that loses the confirm of the clicks a test chooses, raising what `Broker.publish_message`
raises when no confirm comes in time; the broker and the database stay real.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

import common.service
from analyticsservice.main import create_app
from analyticsservice.settings import Settings
from common import topology
from common.broker import Broker, BrokerUnavailable
from common.events import ClicksTracked, Event
from devtools.provision import admin_dsn
from tests.support.infra import Infra
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.integration

When = Literal["after_counted", "before_routed"]


@dataclass
class LostConfirm:
    """The confirm of the next message holding a click on one page is lost: `after_counted`, once the
    broker routed it and the consumer counted it; `before_routed`, before the broker routed it (`held`
    keeps the message the broker takes late, when the test says so)."""

    when: When
    counted: Callable[[], Awaitable[bool]] | None = None
    held: ClicksTracked | None = None


class LostConfirmBroker(Broker):
    faults: dict[str, LostConfirm]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults = {}

    async def publish(self, event: Event, *, headers: dict[str, Any] | None = None) -> None:
        fault = self._fault_for(event)
        if fault is None:
            await super().publish(event, headers=headers)
            return
        assert isinstance(event, ClicksTracked)
        if fault.when == "after_counted":
            await super().publish(event, headers=headers)  # routed into click_tracked_queue
            assert fault.counted is not None
            await eventually(fault.counted, message="the consumer did not count the click")
        else:
            fault.held = event
        # What publish_message raises when the confirm does not come within PUBLISH_TIMEOUT_S.
        raise BrokerUnavailable("the broker is unavailable: TimeoutError: ") from TimeoutError()

    def _fault_for(self, event: Event) -> LostConfirm | None:
        if not isinstance(event, ClicksTracked):
            return None
        faults = [self.faults.pop(click.page) for click in event.clicks if click.page in self.faults]
        return faults[0] if faults else None

    async def publish_late(self, event: ClicksTracked) -> None:
        """The broker takes the held message after all: it is routed to the consumer now."""
        await super().publish(event)


@dataclass
class Analytics:
    client: httpx.AsyncClient
    broker: LostConfirmBroker

    async def clicks(self, page: str) -> int:
        response = await self.client.get("/analytics/clicks", params={"page": page})
        assert response.status_code == 200, response.text
        return int(response.json()["clicks"])

    async def track(self, page: str) -> httpx.Response:
        return await self.client.post("/track_click", json={"user_id": 7, "page": page})


@pytest.fixture
async def analytics(
    infra: Infra, management: Management, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> AsyncIterator[Analytics]:
    monkeypatch.setattr(common.service, "Broker", LostConfirmBroker)  # the broker the lifespan opens
    settings = Settings(
        rabbitmq_url=infra.rabbitmq_url,
        database_url=infra.database_url,
        publish_timeout_s=1.0,
        dependency_retry_delay_s=0.2,
        shutdown_grace_s=5.0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        broker = app.state.runtime.broker
        assert isinstance(broker, LostConfirmBroker)
        await management.take(topology.CLICK_TRACKED.name, count=1000)  # no other test's clicks
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://analyticsservice") as client:
            yield Analytics(client, broker)


def unique_page() -> str:
    return f"/click-durability/{uuid.uuid4().hex[:12]}"


def duplicates_dropped() -> float:
    """Clicks the consumer acknowledged without counting them (processed before)."""
    value = REGISTRY.get_sample_value(
        "messages_consumed_total", {"queue": topology.CLICK_TRACKED.name, "outcome": "duplicate"}
    )
    return value or 0.0


async def late_copy_is_dropped(
    analytics: Analytics, held: ClicksTracked, *, still: Callable[[], Awaitable[bool]]
) -> None:
    """The broker takes the held message after all: the consumer gets it too, drops it, and `still` holds."""
    dropped_before = duplicates_dropped()
    await analytics.broker.publish_late(held)

    async def dropped() -> bool:
        return duplicates_dropped() > dropped_before

    await eventually(dropped, message="the consumer did not drop the late copy")
    await stays(still, duration=1.0, message="a click was counted twice")


async def test_a_click_counted_before_its_confirm_was_lost_is_answered_200_and_counted_once(
    analytics: Analytics,
) -> None:
    page = unique_page()

    async def counted() -> bool:
        return await analytics.clicks(page) == 1

    analytics.broker.faults[page] = LostConfirm("after_counted", counted=counted)
    dropped_before = duplicates_dropped()
    response = await analytics.track(page)

    assert page not in analytics.broker.faults, "the fault was not reached"
    assert response.status_code == 200, response.text  # it was recorded: 503 would say it was not
    assert response.json() == {"status": "tracked"}

    async def outbox_copy_dropped() -> bool:
        return duplicates_dropped() > dropped_before

    await eventually(outbox_copy_dropped, message="the outbox copy never reached the consumer")
    await stays(counted, duration=1.0, message="the click was not counted exactly once")


async def test_a_click_whose_confirm_was_lost_before_it_was_routed_goes_out_through_the_outbox_once(
    analytics: Analytics,
) -> None:
    page = unique_page()
    fault = LostConfirm("before_routed")
    analytics.broker.faults[page] = fault
    response = await analytics.track(page)

    assert response.status_code == 200, response.text
    assert fault.held is not None

    async def counted_once() -> bool:
        return await analytics.clicks(page) == 1

    await eventually(counted_once, message="the outbox did not deliver the click")
    await late_copy_is_dropped(analytics, fault.held, still=counted_once)


@asynccontextmanager
async def database_refusing_the_service(infra: Infra, service: str) -> AsyncIterator[None]:
    """The run's database accepts no new connections and the service's open ones are cut: for the
    service, the database is down (other connections already open stay)."""
    admin = await asyncpg.connect(admin_dsn(infra.database_url))
    try:
        await admin.execute(f'ALTER DATABASE "{infra.database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            infra.database,
            service,
        )
        await asyncio.sleep(0.5)  # the pool sees them closed (used at once, asyncpg raises an internal error)
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{infra.database}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_a_click_neither_the_broker_nor_the_database_can_take_is_answered_503(
    analytics: Analytics, infra: Infra
) -> None:
    page = unique_page()
    fault = LostConfirm("before_routed")
    analytics.broker.faults[page] = fault
    async with database_refusing_the_service(infra, "analyticsservice"):
        response = await analytics.track(page)

    assert response.status_code == 503, response.text
    assert "nothing was accepted" in response.json()["detail"]
    assert response.headers.get("retry-after") == "1"

    async def not_counted() -> bool:
        return await analytics.clicks(page) == 0

    await stays(not_counted, duration=1.0, message="a click answered 503 was counted")


def clicks_published() -> float:
    """Messages of clicks the broker confirmed."""
    value = REGISTRY.get_sample_value(
        "messages_published_total",
        {"exchange": "(default)", "event_type": "ClicksTracked", "outcome": "confirmed"},
    )
    return value or 0.0


async def test_clicks_that_arrive_together_go_out_in_fewer_messages_and_each_counts_once(
    analytics: Analytics,
) -> None:
    page = unique_page()
    published_before = clicks_published()
    responses = await asyncio.gather(*(analytics.track(page) for _ in range(40)))

    assert [response.status_code for response in responses] == [200] * 40
    messages = clicks_published() - published_before
    assert 1 <= messages < 40, f"{messages:g} messages for 40 clicks accepted at once"

    async def counted() -> bool:
        return await analytics.clicks(page) == 40

    await eventually(counted, message="not every click was counted")
    await stays(counted, duration=1.0, message="a click was counted twice")


async def test_a_lost_confirm_of_clicks_accepted_together_sends_them_all_through_the_outbox_once(
    analytics: Analytics,
) -> None:
    """The first click goes out alone; the ten that arrive while it awaits its confirm share the next
    message, whose confirm is lost before the broker routed it."""
    first_page, page = unique_page(), unique_page()
    fault = LostConfirm("before_routed")
    analytics.broker.faults[page] = fault
    responses = await asyncio.gather(analytics.track(first_page), *(analytics.track(page) for _ in range(10)))

    assert [response.status_code for response in responses] == [200] * 11
    assert fault.held is not None
    assert [click.page for click in fault.held.clicks] == [page] * 10, "the ten clicks were not one message"

    async def counted_once() -> bool:
        return await analytics.clicks(page) == 10 and await analytics.clicks(first_page) == 1

    await eventually(counted_once, message="the outbox did not deliver the clicks")
    await late_copy_is_dropped(analytics, fault.held, still=counted_once)
