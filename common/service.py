"""The service factory: a FastAPI app whose lifespan owns every connection, pool and task.

Startup order: logging, database (tables, warm pool), broker (connect, declare the whole
topology), outbox dispatcher and relay, the service's own resources, then consumers - so a
consumer never handles a message before everything it needs is open. Shutdown runs in
reverse: consumers finish their in-flight messages first, the outbox flushes what is
committed, then connections close.

Every service gets `/health` (liveness: the process answers), `/ready` (503 unless the broker
connection is open and the database answers), `/metrics` and `/docs`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import MetaData
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import correlation
from common.asyncapi import asyncapi_document
from common.broker import Broker, BrokerUnavailable
from common.consumer import BatchConsumer, Batched, Consumer, Subscription
from common.database import Database, DatabaseUnavailable, is_dependency_failure, is_invalid_input
from common.http_metrics import instrument_http
from common.inputs import printable
from common.logs import configure_logging
from common.outbox import Outbox
from common.runtime import Runtime
from common.settings import ServiceSettings
from common.tasks import BackgroundTasks
from common.topology import ConsumedQueue, queues_consumed_by

log = logging.getLogger(__name__)

ServiceLifespan = Callable[[Runtime], AbstractAsyncContextManager[None]]

READY_CHECK_TIMEOUT_S = 2.0


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["the message broker is unavailable; try again shortly"])


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    service: str


class ReadinessResponse(BaseModel):
    status: Literal["ready", "not ready"]
    service: str
    checks: dict[str, str] = Field(examples=[{"broker": "ok", "database": "ok"}])


UNAVAILABLE_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "The broker or the database is unavailable; nothing was accepted."}
}


CALL_FAILED_RESPONSES: dict[int | str, dict[str, Any]] = {
    502: {"model": ErrorResponse, "description": "Synchronous fleet: a service it called answered with an error."},
    503: {
        "model": ErrorResponse,
        "description": "A dependency is unavailable (in the synchronous fleet, a service "
        "it called, too); what was committed before the call stands.",
    },
    504: {"model": ErrorResponse, "description": "Synchronous fleet: a service it called did not answer in time."},
}


MALFORMED_BODY_RESPONSE: dict[str, Any] = {
    "description": "The body is not JSON (for instance, not UTF-8); nothing was accepted.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def document_malformed_bodies(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add the 400 FastAPI answers to a body it cannot decode to every operation that takes a body.

    FastAPI answers it before any route runs, so no route's `responses=` can declare it; documenting
    it here keeps the contract true for every route, present and future."""
    takes_body = [
        operation
        for path_item in openapi.get("paths", {}).values()
        for operation in path_item.values()
        if isinstance(operation, dict) and "requestBody" in operation
    ]
    for operation in takes_body:
        operation.setdefault("responses", {}).setdefault("400", MALFORMED_BODY_RESPONSE)
    if takes_body:
        schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorResponse", ErrorResponse.model_json_schema())
    return openapi


def validation_errors(errors: Sequence[Any]) -> list[Any]:
    """FastAPI's 422 body, made sendable: the errors echo the input, which may hold text that UTF-8
    cannot encode (an unpaired surrogate), and must not turn a refusal into a 500."""
    sendable: list[Any] = printable(jsonable_encoder(errors))
    return sendable


async def get_runtime(request: Request) -> Runtime:  # async: a sync dependency would cost a thread hop
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class CorrelationIdMiddleware:
    """Take `X-Correlation-ID` from the request (or start one), bind it, and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        header_name = correlation.CORRELATION_HEADER.lower().encode()
        for name, value in scope["headers"]:
            if name == header_name:
                incoming = value.decode("latin-1")
                break
        correlation_id = correlation.sanitize_correlation_id(incoming)
        status = 500
        started = time.perf_counter()

        async def send_with_correlation_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(correlation.CORRELATION_HEADER, correlation_id)
            await send(message)

        with correlation.bound(correlation_id):
            try:
                await self.app(scope, receive, send_with_correlation_id)
            finally:
                if log.isEnabledFor(logging.DEBUG):  # access log with the correlation id, at DEBUG
                    log.debug(
                        "%s %s -> %d in %.1f ms",
                        scope["method"],
                        scope["path"],
                        status,
                        (time.perf_counter() - started) * 1000,
                        extra={"http_status": status, "path": scope["path"]},
                    )


def _check_subscriptions(service: str, subscriptions: Mapping[ConsumedQueue, Subscription[Any]]) -> None:
    expected = set(queues_consumed_by(service))
    given = set(subscriptions)
    if extra := sorted(queue.name for queue in given - expected):
        raise ValueError(f"common.topology does not assign {extra} to {service}")
    if missing := sorted(queue.name for queue in expected - given):
        # A queue nobody consumes fills up silently: refuse to start rather than lose sight of it.
        raise ValueError(f"{service} has no handler for {missing}, which common.topology assigns to it")


async def _prune_processed_events_forever(settings: ServiceSettings, database: Database) -> None:
    while True:
        try:
            pruned = await database.prune_processed_events(settings.processed_events_retention_s)
            if pruned:
                log.info("pruned %d idempotency records older than the retention period", pruned)
        except Exception as exc:  # the database may be restarting: try again at the next interval
            log.warning("pruning idempotency records failed: %r", exc)
        await asyncio.sleep(settings.processed_events_prune_interval_s)


def keep_startup_objects_out_of_full_collections() -> None:
    """What startup built (modules, models, compiled statements: about 100,000 objects) lives as long as
    the process, yet a full collection walked all of it, finding nothing to free: 70-100 ms in which the
    service answered nothing, every few seconds at 1,000 requests/s (measured with analyticsservice under
    k6-tests/ramp.js: P99 114 ms and arrivals dropped). Frozen, they stay out of the collector's sight and
    a full collection walks only what requests left behind (2-4 ms; P99 22 ms, none dropped)."""
    gc.collect()
    gc.freeze()


def create_service(
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    metadata: MetaData,
    routers: Sequence[APIRouter] = (),
    subscriptions: Mapping[ConsumedQueue, Subscription[Any]] | None = None,
    lifespans: Sequence[ServiceLifespan] = (),
    prefetch_overrides: Mapping[ConsumedQueue, int] | None = None,
) -> FastAPI:
    subscriptions = subscriptions or {}
    _check_subscriptions(settings.service_name, subscriptions)
    synchronous = settings.fleet_mode == "sync"
    if synchronous:
        # Imported by the synchronous fleet alone: httpx, its client, costs every process about 5 MB.
        from common import calls as direct

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service_name, settings.log_level)
        async with AsyncExitStack() as stack:
            database = Database(settings, metadata)
            stack.push_async_callback(database.dispose)
            await database.create_tables()
            await database.open()

            tasks = BackgroundTasks()
            if synchronous:
                # No broker: events are delivered by calls after each commit (common/calls.py).
                calls = direct.DirectCalls(settings, database)
                stack.push_async_callback(calls.close)
                await calls.open()
                stack.push_async_callback(tasks.close)
                runtime = Runtime(settings=settings, database=database, broker=calls, outbox=calls, tasks=tasks)
                direct.serve_own_queues(calls, subscriptions, runtime)
            else:
                broker = Broker(settings)
                stack.push_async_callback(broker.close)
                await broker.connect()
                stack.push_async_callback(tasks.close)
                outbox = Outbox(settings, database, broker)
                outbox.start(tasks)
                stack.push_async_callback(outbox.close)
                runtime = Runtime(settings=settings, database=database, broker=broker, outbox=outbox, tasks=tasks)
            tasks.start("prune-processed-events", lambda: _prune_processed_events_forever(settings, database))

            app.state.runtime = runtime
            for service_lifespan in lifespans:
                await stack.enter_async_context(service_lifespan(runtime))

            consumers: list[Consumer[Any] | BatchConsumer[Any]] = [
                BatchConsumer(queue, subscription, runtime, prefetch_count=(prefetch_overrides or {}).get(queue))
                if isinstance(subscription, Batched)
                else Consumer(queue, subscription, runtime, prefetch_count=(prefetch_overrides or {}).get(queue))
                for queue, subscription in ({} if synchronous else subscriptions).items()
            ]
            await database.warm_up()
            for consumer in consumers:
                await consumer.start()

                async def stop_consumer(consumer: Consumer[Any] | BatchConsumer[Any] = consumer) -> None:
                    await consumer.stop(settings.shutdown_grace_s)

                stack.push_async_callback(stop_consumer)

            keep_startup_objects_out_of_full_collections()
            log.info("%s is up", settings.service_name)
            yield
            log.info("%s is shutting down", settings.service_name)
            gc.unfreeze()  # several apps in one process (the tests): the next one's startup is its own

    if synchronous:
        description += (
            "\n\n**Synchronous fleet** (`FLEET_MODE=sync`): no broker; each event is an HTTP call to the "
            "service that handles it (`POST /events/<queue>`), and a request answers once they have all finished."
        )
    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    if synchronous:
        app.add_middleware(direct.CallDeadlineMiddleware, settings=settings)

        @app.exception_handler(direct.CallFailed)
        async def call_failed(request: Request, exc: direct.CallFailed) -> JSONResponse:
            log.warning(
                "%s %s failed downstream (%d): %s", request.method, request.url.path, exc.status_code, exc.detail
            )
            return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail})

    app.add_middleware(CorrelationIdMiddleware)

    @app.exception_handler(BrokerUnavailable)
    async def broker_unavailable(request: Request, exc: BrokerUnavailable) -> JSONResponse:
        log.warning("refusing %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "the message broker is unavailable; nothing was accepted, try again shortly"},
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": validation_errors(exc.errors())})

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if is_dependency_failure(exc):
            log.warning("refusing %s %s: database unavailable: %r", request.method, request.url.path, exc)
            return JSONResponse(
                status_code=503,
                content={"detail": "the database is unavailable; nothing was accepted, try again shortly"},
                headers={"Retry-After": "1"},
            )
        if is_invalid_input(exc):
            # The API models should have refused the value already; this keeps a value they let through
            # a client error, in the shape of FastAPI's own 422 so clients read one format.
            reason = printable(str(exc).split("\n", 1)[0])  # it quotes the value
            log.warning("refusing %s %s: the database refused a value: %s", request.method, request.url.path, reason)
            error = {
                "type": "value_error",
                "loc": [],
                "msg": f"the database cannot store a value of this request: {reason}",
            }
            return JSONResponse(status_code=422, content={"detail": validation_errors([error])})
        raise exc

    for database_exception in (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(database_exception, database_error)

    @app.exception_handler(OSError)
    async def connection_error(request: Request, exc: OSError) -> JSONResponse:
        log.warning("refusing %s %s: a dependency is unreachable: %r", request.method, request.url.path, exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "a dependency is unreachable; nothing was accepted, try again shortly"},
            headers={"Retry-After": "1"},
        )

    @app.get("/health", tags=["operations"], summary="Liveness: the process is up and serving")
    async def health() -> HealthResponse:
        return HealthResponse(service=settings.service_name)

    @app.get(
        "/ready",
        tags=["operations"],
        summary="Readiness: the broker connection is open, the database answers, every background task runs",
        response_model=ReadinessResponse,
        responses={503: {"model": ReadinessResponse, "description": "A dependency is down."}},
    )
    async def ready(runtime: RuntimeDep) -> JSONResponse:
        checks = {} if synchronous else {"broker": "ok" if runtime.broker.is_connected else "disconnected"}
        try:
            await asyncio.wait_for(runtime.database.ping(), timeout=READY_CHECK_TIMEOUT_S)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        for task, problem in runtime.tasks.problems().items():
            checks[f"task {task}"] = problem
        is_ready = all(value == "ok" for value in checks.values())
        body = ReadinessResponse(
            status="ready" if is_ready else "not ready", service=settings.service_name, checks=checks
        )
        return JSONResponse(status_code=200 if is_ready else 503, content=body.model_dump())

    asyncapi = asyncapi_document(settings.service_name)

    @app.get("/asyncapi.json", tags=["operations"], summary="AsyncAPI 3.0: the channels this service uses")
    async def messaging_contract() -> dict[str, Any]:
        return asyncapi

    for router in routers:
        app.include_router(router)
    if synchronous:
        app.include_router(direct.events_router(subscriptions))

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_malformed_bodies(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # FastAPI's documented way to extend the generated schema

    instrument_http(app)
    return app
