"""What every catalogue change publishes, and the seed products 1-3."""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal

from asyncpg import Record
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert

from common.events import ProductUpdated, StockLevelSet
from common.outbox import UnitOfWork
from common.runtime import Runtime
from common.sql import Statement
from productservice.tables import products

log = logging.getLogger(__name__)


def publish_change(unit: UnitOfWork, product: Record, *, stock_was_set: bool) -> None:
    """Publish a product's new state to the fanout and, if a stock figure was given, to inventory.

    Both events commit with the change itself (the outbox), so the catalogue, search, cache,
    analytics and inventory can never disagree for good about what happened.
    """
    unit.publish(
        ProductUpdated(
            product_id=product["id"],
            name=product["name"],
            stock=product["stock"],
            price=product["price"],
            description=product["description"],
            product_version=product["product_version"],
            updated_at=product["updated_at"],
        )
    )
    if stock_was_set:
        unit.publish(
            StockLevelSet(
                product_id=product["id"], available=product["stock"], product_version=product["product_version"]
            )
        )


@dataclass(frozen=True)
class SeedProduct:
    id: int
    name: str
    description: str
    price: Decimal
    stock: int


SEED_PRODUCTS: tuple[SeedProduct, ...] = (
    SeedProduct(1, "Laptop", "14-inch ultrabook, 16 GB RAM, 512 GB SSD", Decimal("999.99"), 100),
    SeedProduct(2, "Smartphone", "6.1-inch OLED display, 128 GB", Decimal("599.00"), 200),
    SeedProduct(3, "Headphones", "Wireless, active noise cancelling", Decimal("149.50"), 300),
)

_SEED_LOCK_KEY = zlib.crc32(b"productservice.seed")
_LOCK_SEED = Statement(select(func.pg_advisory_xact_lock(bindparam("key"))))
_SEED = Statement(
    insert(products)
    .values(
        [
            {
                "id": seed.id,
                "name": seed.name,
                "description": seed.description,
                "price": seed.price,
                "stock": seed.stock,
                "product_version": 1,
            }
            for seed in SEED_PRODUCTS
        ]
    )
    .on_conflict_do_nothing(index_elements=[products.c.id])
    .returning(*products.c)
)
_MOVE_SEQUENCE_PAST_SEED = Statement(
    text(
        "SELECT setval(pg_get_serial_sequence(:table, 'id'), GREATEST("
        f"(SELECT COALESCE(max(id), 1) FROM {products.fullname}), "
        "COALESCE(pg_sequence_last_value(pg_get_serial_sequence(:table, 'id')::regclass), 1)))"
    ).bindparams(table=products.fullname)
)


async def seed_catalogue(runtime: Runtime) -> int:
    """Insert products 1-3 unless they exist; return how many were inserted.

    Idempotent, and safe with replicas starting together (an advisory lock serialises them).
    Only newly inserted products are announced, so a restart publishes nothing. The identity
    sequence is then moved past the seeded ids - never backwards - so `POST /products` cannot collide.
    """
    async with runtime.outbox.transaction() as unit:
        await unit.connection.execute(_LOCK_SEED, key=_SEED_LOCK_KEY)
        inserted = await unit.connection.fetch(_SEED)
        for product in inserted:
            publish_change(unit, product, stock_was_set=True)
        await unit.connection.execute(_MOVE_SEQUENCE_PAST_SEED)
    if inserted:
        log.info("seeded products %s", [product["id"] for product in inserted])
    return len(inserted)


@asynccontextmanager
async def seeded_catalogue(runtime: Runtime) -> AsyncIterator[None]:
    await seed_catalogue(runtime)
    yield
