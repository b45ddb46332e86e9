from typing import Annotated

from pydantic import Field

from common.settings import PositiveSeconds, ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "analyticsservice"

    # Click messages are counted in batches: one transaction per batch instead of one per message.
    click_batch_size: Annotated[int, Field(ge=1, le=1000)] = 200
    # How long a partly filled batch waits for more messages before it is committed anyway.
    click_batch_max_wait_s: PositiveSeconds = 0.05
