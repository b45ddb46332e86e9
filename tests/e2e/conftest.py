from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from common.broker import Broker
from common.settings import ServiceSettings
from tests.support.fleet import Fleet
from tests.support.impersonator import Impersonator
from tests.support.infra import Infra, isolated_infra
from tests.support.rabbitmq import Management
from tests.support.saga import Saga

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# The design document's delays, shrunk so the suite runs in minutes; set as `make run` users would.
FAST_FLEET_ENVIRONMENT = {
    "EMAIL_SEND_DELAY_S": "0.05",
    "PAYMENT_DELAY_S": "0.2",
    "SAGA_PAYMENT_DELAY_S": "0.2",
    "REPORT_CPU_SECONDS": "0.5",
    "RETRY_BASE_DELAY_S": "0.1",
    # Every request and handled message is logged with its correlation id (test-artifacts/<run>/).
    "LOG_LEVEL": "DEBUG",
}


@pytest.fixture(scope="package")
async def infra() -> AsyncIterator[Infra]:
    """The fleet's own vhost and database, apart from the integration tests' ones."""
    async with isolated_infra() as run_infra:
        yield run_infra


@pytest.fixture(scope="package")
async def management(infra: Infra) -> AsyncIterator[Management]:
    client = Management(infra)
    yield client
    await client.close()


@pytest.fixture(scope="package")
async def fleet(infra: Infra) -> AsyncIterator[Fleet]:
    """All ten services, started as processes with the Procfile's commands; stopped when the e2e tests
    are done, so the fault suite that follows has the machine (and the database's connections) to itself."""
    running = Fleet(infra, ARTIFACTS / infra.vhost, FAST_FLEET_ENVIRONMENT)
    try:
        await running.start()
        yield running
    finally:
        await running.close()


@pytest.fixture(scope="package")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


@pytest.fixture
def saga(fleet: Fleet, http: httpx.AsyncClient, management: Management) -> Saga:
    """Orders, stock and payments of the Scenario 5 saga, as a user and the catalogue drive them."""
    return Saga(fleet, http, management)


@pytest.fixture(scope="package")
async def publisher(infra: Infra) -> AsyncIterator[Impersonator]:
    settings = ServiceSettings(
        service_name="e2e-impersonator", rabbitmq_url=infra.rabbitmq_url, database_url=infra.database_url
    )
    broker = Broker(settings)
    await broker.connect()
    yield Impersonator(broker)
    await broker.close()
