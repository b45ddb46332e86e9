from decimal import Decimal
from typing import Annotated

from pydantic import Field

from common.events import CurrencyCode
from common.settings import Seconds, ServiceSettings

Rate = Annotated[float, Field(ge=0, le=1)]


class Settings(ServiceSettings):
    service_name: str = "paymentservice"

    # The simulated gateway declines this share of payments (decided per payment id, so a redelivery
    # gets the same answer). Scenario 2: none by default.
    payment_failure_rate: Rate = 0.0
    # The same for the saga's charges (decided per order id). 1 by default, as the design document's
    # Scenario 5 example: the payment fails and compensation runs.
    saga_payment_failure_rate: Rate = 1.0
    # The catalogue has no prices the saga could use, so a saga order is charged quantity x this.
    saga_unit_price: Annotated[Decimal, Field(gt=0, max_digits=10, decimal_places=2)] = Decimal("10.00")
    saga_currency: CurrencyCode = "USD"
    # The gateway's delay for a saga charge. Shorter than Scenario 2's PAYMENT_DELAY_S by default so that
    # the design document's example (create an order, poll it two seconds later) finds the saga finished.
    saga_payment_delay_s: Seconds = 1.0
    # Payments spend PAYMENT_DELAY_S waiting for the (simulated) gateway without holding anything but
    # a delivery, so the payment queues take many at once: throughput = concurrency / delay.
    payment_worker_concurrency: Annotated[int, Field(ge=1, le=1000)] = 200
