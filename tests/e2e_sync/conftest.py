"""The synchronous fleet (FLEET_MODE=sync), started with the local runner's commands (Procfile.sync)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from devtools.fleet import SYNC_SERVICES
from tests.e2e.conftest import ARTIFACTS, FAST_FLEET_ENVIRONMENT
from tests.support.fleet import Fleet
from tests.support.infra import Infra, isolated_infra
from tests.support.waiting import eventually

SYNC_FLEET_ENVIRONMENT = {**FAST_FLEET_ENVIRONMENT, "FLEET_MODE": "sync", "CALL_TIMEOUT_S": "10"}


@pytest.fixture(scope="package")
async def infra() -> AsyncIterator[Infra]:
    """A database of its own (and a vhost nobody uses: the synchronous fleet never connects to a broker)."""
    async with isolated_infra() as run_infra:
        yield run_infra


@pytest.fixture(scope="package")
async def fleet(infra: Infra) -> AsyncIterator[Fleet]:
    running = Fleet(infra, ARTIFACTS / f"{infra.vhost}-sync", SYNC_FLEET_ENVIRONMENT, services=SYNC_SERVICES)
    try:
        await running.start()
        # The catalogue's seed is announced in the background once every service answers: tests may
        # order product 1 once inventory has its stock.
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def seeded() -> bool:
                return (await client.get(f"{running.url('inventoryservice')}/inventory/1")).status_code == 200

            await eventually(seeded, timeout=30.0)
        yield running
    finally:
        await running.close()


@pytest.fixture(scope="package")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client
