"""The synchronous fleet's way of reaching the next service: an HTTP call the caller waits for.

With `FLEET_MODE=sync` no broker is involved, and nothing else changes: the routes, the handlers and the
message map are the asynchronous fleet's. `common.topology` still says where each event goes; here a
published event is delivered, once the transaction that published it has committed, to every queue the
topology routes it to, one queue after another, and the publisher waits for each:
- a queue another service consumes: `POST <that service>/events/<queue>` with the event as its body;
- a queue the publishing service consumes itself (payments, reports, clicks): its handler, in-process.
The service that receives the call runs the very handler its consumer runs, through the same pipeline
(`apply_handler`: validation, the idempotency record, one transaction). What that handler publishes is
delivered the same way before it answers, so the message map is also the call graph, and a request
answers when the whole chain it started has finished.

What it models, and what it does not:
- Calls await on the event loop (httpx, one pooled client per service): a waiting request holds no
  thread, unlike the earlier implementation's blocking workers; the cost of waiting is latency, the
  caller's open request and its client connection.
- One deadline per request (CALL_TIMEOUT_S): every call down the chain gets what is left of it, minus a
  margin, so the service that runs out answers 504 first and each caller relays that answer in time.
- A downstream service that is down, refuses or fails makes the caller fail: 503 (unreachable),
  504 (no answer in time) or 502 (it answered with an error), with the chain of services in the message.
  A request's calls are not retried, and there is no outbox or queue: what the caller had committed
  before the call stands (a registered user whose welcome email failed), and the failed step is not
  delivered later. (Only work a service starts on its own is retried in the background; see
  `DirectCalls.transaction`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from common import correlation
from common.addresses import FLEET_SERVICES
from common.consumer import (
    BatchContext,
    Batched,
    CheckProcessedFirst,
    DuplicateDelivery,
    MessageContext,
    PoisonMessage,
    Reject,
    Subscription,
    apply_batch_handler,
    apply_handler,
    decode_body,
)
from common.database import Database
from common.events import Event
from common.outbox import UnitOfWork
from common.settings import ServiceSettings
from common.topology import ConsumedQueue, queues_reached, route_for_publisher

if TYPE_CHECKING:
    from common.runtime import Runtime

log = logging.getLogger(__name__)

DEADLINE_HEADER = "X-Call-Deadline-Ms"
# A callee gets this much less time than its caller has left, so its 504 reaches the caller in time.
CALL_MARGIN_S = 0.25
_MAX_DETAIL = 500
BACKGROUND_RETRY_FIRST_S = 0.5
BACKGROUND_RETRY_MAX_S = 10.0
FLEET_READY_POLL_S = 0.25

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)


class CallFailed(Exception):
    """A service the request called did not do its part: answered with `status_code` and `detail`."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail[:_MAX_DETAIL]


class CallOutcome(BaseModel):
    outcome: Literal["handled", "duplicate"] = Field(
        description="`duplicate`: this service had handled the event before; nothing was applied again."
    )


def remaining_s(settings: ServiceSettings) -> float:
    """What is left of this request's deadline (work outside a request, such as the saga's timeout
    sweep, gets CALL_TIMEOUT_S per delivery)."""
    deadline = _deadline.get()
    if deadline is None:
        return settings.call_timeout_s
    return deadline - time.monotonic()


class CallDeadlineMiddleware:
    """Bind the request's deadline for the calls it makes: what its caller had left (the
    `X-Call-Deadline-Ms` header), or CALL_TIMEOUT_S from now for a request from outside the fleet."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app = app
        self._settings = settings
        self._header = DEADLINE_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budget_s = self._settings.call_timeout_s
        for name, value in scope["headers"]:
            if name == self._header:
                with contextlib.suppress(ValueError):  # not a number: the service's own limit
                    budget_s = min(budget_s, max(0.0, int(value) / 1000))
                break
        token = _deadline.set(time.monotonic() + budget_s)
        try:
            await self.app(scope, receive, send)
        finally:
            _deadline.reset(token)


LocalHandler = Callable[[Event], Awaitable[bool]]


class DirectCalls:
    """What the synchronous fleet has instead of the broker and the outbox: the same `transaction()`
    and `publish()`, delivering by calls after the commit."""

    def __init__(
        self, settings: ServiceSettings, database: Database, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._database = database
        self._transport = transport  # the network's by default
        self._client: httpx.AsyncClient | None = None
        self._local: dict[str, LocalHandler] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def publisher(self) -> str:
        return self._settings.service_name

    async def open(self) -> None:
        # Connections are kept open and reused: a call costs a request, not a TCP handshake.
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50), transport=self._transport
        )

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()  # nothing keeps them across a restart: the synchronous fleet has no outbox
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def serve_locally(self, queue: ConsumedQueue, handle: LocalHandler) -> None:
        """Deliver events routed to `queue` (consumed by this very service) in-process."""
        self._local[queue.name] = handle

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """Business writes in one transaction; its events are delivered once it has committed (and never
        if it rolls back): before this block ends inside a request, which fails if a delivery does. Work a
        service starts on its own (the catalogue's seed at startup, the saga's timeout sweep) has no caller
        to fail: its events are delivered in the background, again and again until every call succeeds."""
        async with self._database.transaction() as connection:
            unit = UnitOfWork(connection, self.publisher)
            yield unit
        if not unit.events:
            return
        if _deadline.get() is None:
            self._deliver_in_background(unit.events)
        else:
            await self.deliver(unit.events)

    def _deliver_in_background(self, events: Sequence[Event]) -> None:
        task = asyncio.create_task(self._deliver_until_done(list(events)), name="deliver-in-background")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver_until_done(self, events: Sequence[Event]) -> None:
        delay_s = BACKGROUND_RETRY_FIRST_S
        while True:
            # Only once every service answers: a handler that committed and then failed to reach the next
            # service would take the retry for a duplicate, and the step after it would be lost.
            await self._wait_for_fleet()
            try:
                await self.deliver(events)
                return
            except CallFailed as exc:  # every handler is idempotent: the first hop may be tried again
                log.info("delivering %d events failed (%s); again in %.1f s", len(events), exc.detail, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, BACKGROUND_RETRY_MAX_S)

    async def _wait_for_fleet(self) -> None:
        # Polled: readiness is the other services' to tell, over HTTP; there is nothing here to wait on.
        ready = await self._fleet_ready()
        while not ready:
            await asyncio.sleep(FLEET_READY_POLL_S)
            ready = await self._fleet_ready()

    async def _fleet_ready(self) -> bool:
        if self._client is None:
            return False

        async def ready(service: str) -> bool:
            assert self._client is not None
            try:
                response = await self._client.get(f"{self._settings.service_url(service)}/ready", timeout=2.0)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        return all(await asyncio.gather(*(ready(service) for service in FLEET_SERVICES)))

    async def publish(self, event: Event, *, headers: Mapping[str, Any] | None = None) -> None:
        """Deliver `event` now (the broker's `publish`, for a caller that writes nothing itself)."""
        route_for_publisher(event, self.publisher)
        await self.deliver([event])

    async def deliver(self, events: Sequence[Event]) -> None:
        """Deliver each event to every queue the topology routes it to, in order; raise `CallFailed` for
        the first that fails (the rest are not attempted)."""
        for event in events:
            for queue in queues_reached(route_for_publisher(event, self.publisher)):
                await self._deliver_to(queue, event)

    async def _deliver_to(self, queue: ConsumedQueue, event: Event) -> None:
        left_s = remaining_s(self._settings)
        if left_s <= CALL_MARGIN_S:
            raise CallFailed(504, f"no time left to deliver {event.event_type} to {queue.consumer}")
        local = self._local.get(queue.name)
        if local is not None:
            try:
                async with asyncio.timeout(left_s):
                    await local(event)
            except TimeoutError:
                raise CallFailed(504, f"{queue.consumer} did not handle {event.event_type} in time") from None
            return
        await self._call(queue, event, left_s)

    async def _call(self, queue: ConsumedQueue, event: Event, left_s: float) -> None:
        if self._client is None:
            raise CallFailed(503, f"{self.publisher} is shutting down")
        url = f"{self._settings.service_url(queue.consumer)}/events/{queue.name}"
        headers = {
            correlation.CORRELATION_HEADER: correlation.current_correlation_id(),
            DEADLINE_HEADER: str(int((left_s - CALL_MARGIN_S) * 1000)),
            "Content-Type": "application/json",
        }
        try:
            response = await self._client.post(url, content=event.model_dump_json(), headers=headers, timeout=left_s)
        except httpx.TimeoutException:
            raise CallFailed(504, f"{queue.consumer} did not answer within {left_s:.1f} s") from None
        except httpx.TransportError as exc:
            raise CallFailed(503, f"{queue.consumer} is unreachable: {type(exc).__name__}") from None
        if response.is_success:
            return
        detail = _detail_of(response)
        # A 503 or 504 further down stays what it is; anything else the callee answered is a bad gateway here.
        status_code = response.status_code if response.status_code in (503, 504) else 502
        raise CallFailed(
            status_code, f"{queue.consumer} answered {response.status_code} to {event.event_type}: {detail}"
        )


def _detail_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_DETAIL]
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else str(body)[:_MAX_DETAIL]


async def handle_event(queue: ConsumedQueue, subscription: Subscription[Any], event: Event, runtime: Runtime) -> bool:
    """Run `queue`'s handler on `event` as its consumer would; return False for a known duplicate."""
    try:
        if isinstance(subscription, Batched):
            await apply_batch_handler(subscription.handler, BatchContext(queue, [event], runtime))
        else:
            first = isinstance(subscription, CheckProcessedFirst)
            handler = subscription.handler if isinstance(subscription, CheckProcessedFirst) else subscription
            await apply_handler(handler, MessageContext(queue, event, 1, runtime), check_processed_first=first)
    except DuplicateDelivery:
        return False
    return True


def serve_own_queues(
    calls: DirectCalls, subscriptions: Mapping[ConsumedQueue, Subscription[Any]], runtime: Runtime
) -> None:
    """Let `calls` deliver to this service's own queues without a round trip over HTTP."""
    for queue, subscription in subscriptions.items():

        async def handle(
            event: Event, queue: ConsumedQueue = queue, subscription: Subscription[Any] = subscription
        ) -> bool:
            try:
                return await handle_event(queue, subscription, event, runtime)
            except Reject as exc:
                raise CallFailed(502, f"{queue.consumer} refused {event.event_type}: {exc}") from exc

        calls.serve_locally(queue, handle)


def events_router(subscriptions: Mapping[ConsumedQueue, Subscription[Any]]) -> APIRouter:
    """`POST /events/<queue>` for each queue the service consumes: what a call delivers to it."""
    router = APIRouter(tags=["calls (synchronous fleet)"])
    for queue, subscription in subscriptions.items():
        router.add_api_route(
            f"/events/{queue.name}",
            _receiver(queue, subscription),
            methods=["POST"],
            summary=f"Handle a {queue.event.type_name()} now, as the consumer of `{queue.name}` would",
            description=f"{queue.description} Answers once the handler's transaction has committed and what "
            "it published has been delivered in turn. 422: not a valid event, or the handler refused it; "
            "502/503/504: a service further down failed.",
            response_model=CallOutcome,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": queue.event.model_json_schema()}},
                }
            },
        )
    return router


def _receiver(
    queue: ConsumedQueue, subscription: Subscription[Any]
) -> Callable[[Request], Awaitable[CallOutcome | JSONResponse]]:
    async def receive(request: Request) -> CallOutcome | JSONResponse:
        runtime: Runtime = request.app.state.runtime
        try:
            event = decode_body(await request.body(), queue.event)
        except PoisonMessage as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        try:
            handled = await handle_event(queue, subscription, event, runtime)
        except Reject as exc:
            return JSONResponse(status_code=422, content={"detail": f"{queue.consumer} refused it: {exc}"})
        return CallOutcome(outcome="handled" if handled else "duplicate")

    receive.__name__ = f"handle_{queue.name}"
    return receive
