"""The whole fleet, started with the local runner's commands, comes up and answers its operations endpoints."""

from __future__ import annotations

import socket

import httpx
import pytest

from devtools.fleet import SERVICES
from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("service", [spec.name for spec in SERVICES])
async def test_service_is_ready_and_documents_itself(fleet: Fleet, http: httpx.AsyncClient, service: str) -> None:
    ready = await http.get(f"{fleet.url(service)}/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "service": service, "checks": {"broker": "ok", "database": "ok"}}

    health = await http.get(f"{fleet.url(service)}/health")
    assert health.json() == {"status": "ok", "service": service}

    schema = (await http.get(f"{fleet.url(service)}/openapi.json")).json()
    assert {"/health", "/ready"} <= set(schema["paths"])
    assert (await http.get(f"{fleet.url(service)}/docs")).status_code == 200

    metrics = (await http.get(f"{fleet.url(service)}/metrics")).text
    assert "http_requests_total" in metrics
    assert "http_request_duration_seconds_bucket" in metrics


async def test_correlation_id_is_echoed_or_created(fleet: Fleet, http: httpx.AsyncClient) -> None:
    given = await http.get(f"{fleet.url('userservice')}/health", headers={"X-Correlation-ID": "trace-me-42"})
    assert given.headers["X-Correlation-ID"] == "trace-me-42"
    created = await http.get(f"{fleet.url('userservice')}/health")
    assert len(created.headers["X-Correlation-ID"]) == 32


async def test_every_service_holds_one_named_broker_connection(fleet: Fleet, management: Management) -> None:
    for spec in SERVICES:
        name = f"{spec.name}@{socket.gethostname()}:{fleet.pid(spec.name)}"
        connections = await eventually(lambda name=name: management.connections_named(name))
        assert len(connections) == 1, f"{spec.name} should hold exactly one connection, has {len(connections)}"
