from fastapi import FastAPI

from common import topology
from common.consumer import CheckProcessedFirst
from common.service import create_service
from paymentservice.api import router
from paymentservice.handlers import cancel_order_payment, charge_order, record_audit, settle_payment
from paymentservice.settings import Settings
from paymentservice.tables import metadata


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service(
        settings,
        title="PaymentService",
        description="Scenario 2 (background payments): `POST /process_payment` accepts a payment and returns at "
        "once; a worker waits for the simulated gateway (`PAYMENT_DELAY_S`), records the outcome and announces "
        "`PaymentCompleted`; `GET /payments/{payment_id}` shows it. Scenario 5 (saga): charges orders whose stock "
        "is reserved (`StockReserved`), announcing `PaymentCompleted` or `PaymentFailed`; never charges an order "
        "cancelled by the saga timeout, and refunds a charge that raced the cancellation.",
        metadata=metadata,
        routers=[router],
        subscriptions={
            # The gateway is called before the transaction: known duplicates must not reach those handlers.
            topology.PAYMENT_INITIATED: CheckProcessedFirst(settle_payment),
            topology.PAYMENT_COMPLETED_AUDIT: record_audit,
            topology.STOCK_RESERVED: CheckProcessedFirst(charge_order),
            topology.PAYMENT_ORDER_CANCELLED: cancel_order_payment,
        },
        prefetch_overrides={
            topology.PAYMENT_INITIATED: settings.payment_worker_concurrency,
            topology.STOCK_RESERVED: settings.payment_worker_concurrency,
        },
    )


app = create_app()
