from fastapi import FastAPI

from common import topology
from common.service import create_service
from inventoryservice.api import router
from inventoryservice.handlers import (
    cancel_order_stock,
    release_for_failed_payment,
    reserve_stock,
    sell_reserved_stock,
    set_stock_level,
)
from inventoryservice.settings import Settings
from inventoryservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="InventoryService",
        description="Owns the stock (Scenario 5 saga participant). Reserves stock for new orders (`OrderCreated`) "
        "or refuses them (`StockReservationFailed`); turns the reservation into a sale when the payment completes, "
        "releases it when the payment fails or the order is cancelled. The catalogue sets a product's stock with "
        "`StockLevelSet`; every change of the figures is announced as `StockLevelChanged`. `GET /inventory/{id}`: "
        "available + reserved + sold always equals the total stocked.",
        metadata=metadata,
        routers=[router],
        subscriptions={
            topology.ORDER_CREATED: reserve_stock,
            topology.INVENTORY_PAYMENT_COMPLETED: sell_reserved_stock,
            topology.INVENTORY_PAYMENT_FAILED: release_for_failed_payment,
            topology.INVENTORY_ORDER_CANCELLED: cancel_order_stock,
            topology.INVENTORY_STOCK_SET: set_stock_level,
        },
    )


app = create_app()
