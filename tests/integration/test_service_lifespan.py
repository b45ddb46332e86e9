"""What a service's lifespan (common/service.py) does once everything is open, seen from the process."""

from __future__ import annotations

import gc

import pytest

from common.service import create_service
from tests.integration.conftest import METADATA, core_settings
from tests.support.infra import Infra

pytestmark = pytest.mark.integration


async def test_a_running_service_keeps_what_startup_built_out_of_full_collections(infra: Infra) -> None:
    app = create_service(core_settings(infra), title="CoreTest", description="A service", metadata=METADATA)
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        # Its modules, models, compiled statements and open clients: tens of thousands of objects.
        assert gc.get_freeze_count() > 10_000
        assert app.state.runtime.broker.is_connected
    assert gc.get_freeze_count() == 0  # the next app in this process freezes its own startup
