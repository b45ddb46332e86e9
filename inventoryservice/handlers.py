"""InventoryService's saga steps: reserve, sell, release, and apply the catalogue's stock figure.

Every change to a product's figures is one conditional UPDATE of its `stock` row (row-locked by
PostgreSQL), so concurrent orders never oversell and never lose each other's updates; what inventory
did for each order is one row of `reservations`, moved only along reserved -> sold | released,
sold -> returned, so a duplicate or late saga event finds nothing left to do. Each change publishes
StockLevelChanged (with the row's new `stock_version`) in the same transaction, through the outbox.
"""

from __future__ import annotations

import logging

from asyncpg import Record
from sqlalchemy import any_, bindparam, case, func, literal, select, update
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.consumer import MessageContext
from common.events import (
    OrderCancelled,
    OrderCreated,
    PaymentCompleted,
    PaymentFailed,
    StockLevelChanged,
    StockLevelSet,
    StockReleased,
    StockReservationFailed,
    StockReserved,
)
from common.metrics import SAGA_COMPENSATIONS
from common.outbox import UnitOfWork
from common.sql import Connection, Statement
from inventoryservice.metrics import RESERVATIONS
from inventoryservice.tables import reservations, stock

log = logging.getLogger(__name__)

INSUFFICIENT_STOCK = "insufficient_stock"
UNKNOWN_PRODUCT = "unknown_product"

_FIGURES = (stock.c.product_id, stock.c.available, stock.c.reserved, stock.c.sold, stock.c.stock_version)
_ORDER, _PRODUCT, _QUANTITY, _REASON = (
    bindparam("order_id"),
    bindparam("product_id"),
    bindparam("quantity"),
    bindparam("reason"),
)

CLAIM_ORDER = Statement(
    pg_insert(reservations)
    .values(order_id=_ORDER, product_id=_PRODUCT, quantity=_QUANTITY, status="reserved")
    .on_conflict_do_nothing(index_elements=["order_id"])
    .returning(reservations.c.order_id)
)
RESERVE = Statement(
    update(stock)
    .where(stock.c.product_id == _PRODUCT, stock.c.available >= _QUANTITY)
    .values(
        available=stock.c.available - _QUANTITY,
        reserved=stock.c.reserved + _QUANTITY,
        stock_version=stock.c.stock_version + 1,
        updated_at=func.now(),
    )
    .returning(*_FIGURES)
)
AVAILABLE = Statement(select(stock.c.available).where(stock.c.product_id == _PRODUCT))
REJECT = Statement(
    update(reservations)
    .where(reservations.c.order_id == _ORDER)
    .values(status="rejected", reason=_REASON, updated_at=func.now())
)
# Shift quantities between a product's figures in one statement; the checks refuse a negative result.
MOVE_STOCK = Statement(
    update(stock)
    .where(stock.c.product_id == _PRODUCT)
    .values(
        available=stock.c.available + bindparam("available"),
        reserved=stock.c.reserved + bindparam("reserved"),
        sold=stock.c.sold + bindparam("sold"),
        stock_version=stock.c.stock_version + 1,
        updated_at=func.now(),
    )
    .returning(*_FIGURES)
)
SELL = Statement(
    update(reservations)
    .where(reservations.c.order_id == _ORDER, reservations.c.status == "reserved")
    .values(status="sold", updated_at=func.now())
    .returning(reservations.c.product_id, reservations.c.quantity)
)
RELEASE = Statement(
    update(reservations)
    .where(reservations.c.order_id == _ORDER, reservations.c.status == "reserved")
    .values(status="released", reason=_REASON, updated_at=func.now())
    .returning(reservations.c.product_id, reservations.c.quantity)
)
CANCEL_BEFORE_SEEN = Statement(
    pg_insert(reservations)
    .values(order_id=_ORDER, product_id=_PRODUCT, quantity=_QUANTITY, status="cancelled", reason=_REASON)
    .on_conflict_do_nothing(index_elements=["order_id"])
    .returning(reservations.c.order_id)
)
UNDO = Statement(
    update(reservations)
    .where(reservations.c.order_id == _ORDER, reservations.c.status == any_(array(("reserved", "sold"))))
    .values(
        status=case((reservations.c.status == "sold", literal("returned")), else_=literal("released")),
        reason=_REASON,
        updated_at=func.now(),
    )
    .returning(reservations.c.product_id, reservations.c.quantity, reservations.c.status)
)
_stock_set = pg_insert(stock).values(
    product_id=_PRODUCT,
    available=bindparam("available"),
    reserved=0,
    sold=0,
    total=bindparam("available"),
    product_version=bindparam("product_version"),
    stock_version=1,
)
SET_STOCK = Statement(
    _stock_set.on_conflict_do_update(
        index_elements=["product_id"],
        set_={
            "total": stock.c.total + (_stock_set.excluded.available - stock.c.available),
            "available": _stock_set.excluded.available,
            "product_version": _stock_set.excluded.product_version,
            "stock_version": stock.c.stock_version + 1,
            "updated_at": func.now(),
        },
        where=stock.c.product_version < _stock_set.excluded.product_version,
    ).returning(*_FIGURES)
)


def _announce(unit: UnitOfWork, figures: Record) -> None:
    unit.publish(
        StockLevelChanged(
            product_id=figures["product_id"],
            available=figures["available"],
            reserved=figures["reserved"],
            sold=figures["sold"],
            stock_version=figures["stock_version"],
        )
    )


async def _move_stock(
    connection: Connection, product_id: int, *, available: int = 0, reserved: int = 0, sold: int = 0
) -> Record:
    figures = await connection.fetchrow(
        MOVE_STOCK, product_id=product_id, available=available, reserved=reserved, sold=sold
    )
    if figures is None:
        raise LookupError(f"product {product_id} has a reservation but no stock row")
    return figures


async def reserve_stock(event: OrderCreated, ctx: MessageContext[OrderCreated]) -> None:
    async with ctx.transaction() as unit:
        claimed = await unit.connection.fetchval(
            CLAIM_ORDER, order_id=event.order_id, product_id=event.product_id, quantity=event.quantity
        )
        if claimed is None:
            log.info("order %d was already handled (or cancelled): reserving nothing", event.order_id)
            return
        figures = await unit.connection.fetchrow(RESERVE, product_id=event.product_id, quantity=event.quantity)
        if figures is None:
            available = await unit.connection.fetchval(AVAILABLE, product_id=event.product_id)
            reason = outcome = UNKNOWN_PRODUCT if available is None else INSUFFICIENT_STOCK
            await unit.connection.execute(REJECT, order_id=event.order_id, reason=reason)
            unit.publish(
                StockReservationFailed(
                    order_id=event.order_id,
                    product_id=event.product_id,
                    quantity=event.quantity,
                    reason=reason,
                    available=available,
                )
            )
        else:
            unit.publish(
                StockReserved(
                    order_id=event.order_id,
                    product_id=event.product_id,
                    quantity=event.quantity,
                    payment_behaviour=event.payment_behaviour,
                )
            )
            _announce(unit, figures)
            outcome = "reserved"
    RESERVATIONS.labels(outcome=outcome).inc()


async def sell_reserved_stock(event: PaymentCompleted, ctx: MessageContext[PaymentCompleted]) -> None:
    if event.order_id is None:
        return  # the topology routes only saga payments here; one without an order (sent by hand) sells nothing
    async with ctx.transaction() as unit:
        sold = await unit.connection.fetchrow(SELL, order_id=event.order_id)
        if sold is None:
            log.info("order %d has no reserved stock left to sell (released or sold already)", event.order_id)
            return
        quantity = sold["quantity"]
        _announce(unit, await _move_stock(unit.connection, sold["product_id"], reserved=-quantity, sold=quantity))


async def release_for_failed_payment(event: PaymentFailed, ctx: MessageContext[PaymentFailed]) -> None:
    """Compensation: give back exactly this order's reservation (as recorded here, not as the event says)."""
    async with ctx.transaction() as unit:
        released = await unit.connection.fetchrow(RELEASE, order_id=event.order_id, reason=event.reason)
        if released is None:
            log.info("order %d has no reservation left to release", event.order_id)
            return
        product_id, quantity = released["product_id"], released["quantity"]
        figures = await _move_stock(unit.connection, product_id, available=quantity, reserved=-quantity)
        unit.publish(
            StockReleased(order_id=event.order_id, product_id=product_id, quantity=quantity, reason=event.reason)
        )
        _announce(unit, figures)
    SAGA_COMPENSATIONS.labels(action="release_reservation").inc()


async def cancel_order_stock(event: OrderCancelled, ctx: MessageContext[OrderCancelled]) -> None:
    """The saga gave up on the order: release its reservation, reverse its sale (the payment service
    refunds that charge), or - if its OrderCreated has not arrived yet - make sure it never reserves."""
    async with ctx.transaction() as unit:
        tombstone = await unit.connection.fetchval(
            CANCEL_BEFORE_SEEN,
            order_id=event.order_id,
            product_id=event.product_id,
            quantity=event.quantity,
            reason=event.reason,
        )
        if tombstone is not None:
            log.info("order %d cancelled before inventory saw it: it will reserve nothing", event.order_id)
            return
        undone = await unit.connection.fetchrow(UNDO, order_id=event.order_id, reason=event.reason)
        if undone is None:
            return  # refused, released or returned already: nothing is held for it
        sale_reversed = undone["status"] == "returned"
        product_id, quantity = undone["product_id"], undone["quantity"]
        figures = await _move_stock(
            unit.connection,
            product_id,
            available=quantity,
            reserved=0 if sale_reversed else -quantity,
            sold=-quantity if sale_reversed else 0,
        )
        unit.publish(
            StockReleased(
                order_id=event.order_id,
                product_id=product_id,
                quantity=quantity,
                reason=event.reason,
                sale_reversed=sale_reversed,
            )
        )
        _announce(unit, figures)
    SAGA_COMPENSATIONS.labels(action="reverse_sale" if sale_reversed else "release_reservation").inc()


async def set_stock_level(event: StockLevelSet, ctx: MessageContext[StockLevelSet]) -> None:
    """The catalogue sets the sellable figure: `available` becomes it, and the difference counts as a
    restock (or a write-off) in `total`, so the identity holds. A set older than the last applied one
    (or a repeat of it) changes nothing, whatever order the broker delivers them in."""
    async with ctx.transaction() as unit:
        figures = await unit.connection.fetchrow(
            SET_STOCK, product_id=event.product_id, available=event.available, product_version=event.product_version
        )
        if figures is None:
            log.info(
                "ignoring stock set for product %d at catalogue version %d: a newer one is applied",
                event.product_id,
                event.product_version,
            )
            return
        _announce(unit, figures)
