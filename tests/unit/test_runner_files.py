from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import ServiceSettings
from devtools.fleet import PROCFILES, SERVICES, SYNC_SERVICES, render_procfile

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_procfiles_are_generated_from_the_fleet_description(mode: str) -> None:
    assert (ROOT / PROCFILES[mode]).read_text() == render_procfile(mode), "run `make procfile`"  # type: ignore[arg-type]


def test_the_synchronous_fleet_answers_on_the_earlier_implementations_ports() -> None:
    ports = {service.name: service.port for service in SYNC_SERVICES}
    assert ports == {
        "userservice": 8001,
        "paymentservice": 8002,
        "productservice": 8003,
        "reportservice": 8004,
        "orderservice": 8005,
        "analyticsservice": 8006,
        "emailservice": 8007,
        "searchservice": 8008,
        "cacheservice": 8009,
        "inventoryservice": 8010,
    }
    assert "--port ${EMAILSERVICE_PORT:-8007}" in render_procfile("sync")


def test_a_synchronous_service_calls_its_peers_where_they_answer() -> None:
    local = ServiceSettings(fleet_mode="sync")
    assert local.service_url("emailservice") == "http://127.0.0.1:8007"
    moved = ServiceSettings(fleet_mode="sync", service_ports={"emailservice": 9123})
    assert moved.service_url("emailservice") == "http://127.0.0.1:9123"
    compose = ServiceSettings(fleet_mode="sync", service_url_template="http://{service}:{port}")
    assert compose.service_url("inventoryservice") == "http://inventoryservice:8010"
    assert ServiceSettings().service_url("emailservice") == "http://127.0.0.1:8107"


def test_design_doc_ports() -> None:
    assert {service.name: service.port for service in SERVICES} == {
        "userservice": 8101,
        "paymentservice": 8102,
        "productservice": 8103,
        "reportservice": 8104,
        "orderservice": 8105,
        "analyticsservice": 8106,
        "emailservice": 8107,
        "searchservice": 8108,
        "cacheservice": 8109,
        "inventoryservice": 8110,
    }


def test_every_service_is_an_importable_package_with_an_app() -> None:
    for service in SERVICES:
        assert (ROOT / service.name / "__init__.py").exists()
        assert (ROOT / service.name / "main.py").read_text().count("app = create_app()") == 1


def test_every_service_consumes_exactly_the_queues_the_map_assigns_to_it() -> None:
    for service in SERVICES:
        module = importlib.import_module(f"{service.name}.main")
        assert module.app.title, f"{service.name} did not build its app"


def test_a_service_missing_a_handler_refuses_to_start() -> None:
    from common.database import service_metadata
    from common.service import create_service
    from common.settings import ServiceSettings

    with pytest.raises(ValueError, match="no handler for"):
        create_service(
            ServiceSettings(service_name="emailservice"),
            title="x",
            description="x",
            metadata=service_metadata("emailservice_test"),
        )


@pytest.mark.parametrize(("mode", "loads_httpx"), [("async", False), ("sync", True)])
def test_only_the_synchronous_fleet_loads_its_http_client(mode: str, loads_httpx: bool) -> None:
    """httpx costs every process about 5 MB: the asynchronous fleet, which never calls a service, goes without."""
    probe = "import sys, userservice.main, analyticsservice.main; print('httpx' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "FLEET_MODE": mode},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(loads_httpx)
