from __future__ import annotations

from pathlib import Path

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
