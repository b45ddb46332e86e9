from typing import Annotated

from pydantic import Field

from common.settings import PositiveSeconds, ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "orderservice"

    # An order not completed or failed this long after it was accepted fails with reason `timeout`,
    # and OrderCancelled makes inventory release its stock and payment never charge it (or refund).
    # The deadline is fixed when the order is accepted.
    saga_timeout_s: PositiveSeconds = 30.0
    # How often overdue orders are looked for: a timeout fires up to this much late.
    saga_timeout_check_interval_s: PositiveSeconds = 0.5
    saga_timeout_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
