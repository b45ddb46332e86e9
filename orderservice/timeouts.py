"""The saga timeout: orders still pending after their deadline fail with reason `timeout`.

A background task of the service (opened and closed by its lifespan) looks for overdue orders every
SAGA_TIMEOUT_CHECK_INTERVAL_S, starting one SAGA_TIMEOUT_S after the service started. Failing an
order and publishing its OrderCancelled commit together; rows are taken with FOR UPDATE SKIP LOCKED,
so several replicas share the work and an order whose payment outcome is being applied right now is
left to that outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import bindparam, func, select, update

from common.database import is_dependency_failure
from common.events import OrderCancelled
from common.runtime import Runtime
from common.sql import Statement
from orderservice.handlers import RECORD_STEP, observe_saga, step_row
from orderservice.settings import Settings
from orderservice.tables import orders

log = logging.getLogger(__name__)

TIMEOUT = "timeout"

_overdue = (
    select(orders.c.id)
    .where(orders.c.status == "pending", orders.c.deadline <= func.now())
    .order_by(orders.c.deadline)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
FAIL_OVERDUE = Statement(
    update(orders)
    .where(orders.c.id.in_(_overdue.scalar_subquery()))
    .values(status="failed", failure_reason=TIMEOUT, updated_at=func.now())
    .returning(
        orders.c.id,
        orders.c.product_id,
        orders.c.quantity,
        orders.c.correlation_id,
        orders.c.created_at,
        orders.c.updated_at,
        orders.c.deadline,
    )
)


def order_settings(runtime: Runtime) -> Settings:
    settings = runtime.settings
    if not isinstance(settings, Settings):
        raise TypeError("orderservice runs with orderservice.settings.Settings")
    return settings


async def fail_overdue_orders(runtime: Runtime) -> int:
    """Fail one batch of overdue orders and announce their cancellation; return how many."""
    settings = order_settings(runtime)
    async with runtime.outbox.transaction() as unit:
        failed = await unit.connection.fetch(FAIL_OVERDUE, limit=settings.saga_timeout_batch_size)
        if not failed:
            return 0
        steps = []
        for order in failed:
            event = OrderCancelled(
                order_id=order["id"],
                product_id=order["product_id"],
                quantity=order["quantity"],
                reason=TIMEOUT,
                correlation_id=order["correlation_id"],
            )
            unit.publish(event)
            waited = (order["deadline"] - order["created_at"]).total_seconds()
            steps.append(
                step_row(
                    order["id"],
                    "order_timed_out",
                    event,
                    f"not completed within {waited:g}s: order failed; inventory releases its stock and payment "
                    "never charges it (or refunds a charge that comes late)",
                )
            )
        await unit.connection.executemany(RECORD_STEP, steps)
    for order in failed:
        observe_saga("failed", TIMEOUT, order["created_at"], order["updated_at"])
    log.warning("%d orders timed out: %s", len(failed), [order["id"] for order in failed])
    return len(failed)


async def _watch_forever(runtime: Runtime) -> None:
    settings = order_settings(runtime)
    # Outcomes that arrived while this service was down are still in its queues: give the consumers
    # one timeout period to apply them before judging any order late (other replicas keep watching).
    await asyncio.sleep(settings.saga_timeout_s)
    while True:
        try:
            while await fail_overdue_orders(runtime) >= settings.saga_timeout_batch_size:
                pass  # a full batch: more may be overdue
        except Exception as exc:
            level = logging.WARNING if is_dependency_failure(exc) else logging.ERROR
            log.log(level, "saga timeout check failed, retrying: %r", exc)
        await asyncio.sleep(settings.saga_timeout_check_interval_s)


@contextlib.asynccontextmanager
async def saga_timeouts(runtime: Runtime) -> AsyncIterator[None]:
    runtime.tasks.start("saga-timeouts", lambda: _watch_forever(runtime))
    try:
        yield
    finally:
        await runtime.tasks.stop("saga-timeouts")
