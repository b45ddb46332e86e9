from fastapi import FastAPI

from common import topology
from common.service import create_service
from orderservice.api import router
from orderservice.handlers import (
    on_payment_completed,
    on_payment_failed,
    on_payment_refunded,
    on_stock_released,
    on_stock_reservation_failed,
    on_stock_reserved,
)
from orderservice.settings import Settings
from orderservice.tables import metadata
from orderservice.timeouts import saga_timeouts


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service(
        settings or Settings(),
        title="OrderService",
        description="Scenario 5 (saga by choreography): `POST /create_order` stores the order `pending` and commits "
        "`OrderCreated` with it. Inventory reserves the stock, payment charges it; the order becomes `completed` on "
        "`PaymentCompleted`, or `failed` on `PaymentFailed` / `StockReservationFailed` while inventory releases the "
        "reservation. An order not settled within `SAGA_TIMEOUT_S` fails with reason `timeout` and `OrderCancelled` "
        "undoes the other steps. `GET /orders/{id}` shows the status and the saga's timeline.",
        metadata=metadata,
        routers=[router],
        subscriptions={
            topology.ORDER_STOCK_RESERVED: on_stock_reserved,
            topology.ORDER_STOCK_RESERVATION_FAILED: on_stock_reservation_failed,
            topology.ORDER_PAYMENT_COMPLETED: on_payment_completed,
            topology.ORDER_PAYMENT_FAILED: on_payment_failed,
            topology.ORDER_STOCK_RELEASED: on_stock_released,
            topology.ORDER_PAYMENT_REFUNDED: on_payment_refunded,
        },
        lifespans=[saga_timeouts],
    )


app = create_app()
