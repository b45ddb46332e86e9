from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from devtools.fleet import SERVICES, render_procfile

ROOT = Path(__file__).resolve().parents[2]


def test_procfile_is_generated_from_the_fleet_description() -> None:
    assert (ROOT / "Procfile").read_text() == render_procfile(), "run `make procfile`"


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
