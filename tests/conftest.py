from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.infra import Infra, isolated_infra
from tests.support.rabbitmq import Management

_TIERS = ("unit", "integration", "e2e", "e2e_sync", "faults")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-report",
        default=None,
        help="also write the fault suite's markdown table here (make faults: docs/fault-injection-report.md)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast feedback first: unit, integration, the end-to-end tests that start the fleet, then the faults."""

    def tier(item: pytest.Item) -> int:
        parts = item.path.parts
        return next((index for index, name in enumerate(_TIERS) if name in parts), len(_TIERS))

    items.sort(key=tier)


@pytest.fixture(scope="session")
async def infra() -> AsyncIterator[Infra]:
    """A RabbitMQ vhost and a PostgreSQL database for this test run only, removed afterwards."""
    async with isolated_infra() as run_infra:
        yield run_infra


@pytest.fixture(scope="session")
async def management(infra: Infra) -> AsyncIterator[Management]:
    client = Management(infra)
    yield client
    await client.close()
