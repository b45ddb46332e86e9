"""The generated documentation of the message map is current and internally consistent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.asyncapi import asyncapi_document
from common.topology import QUEUES, ROUTES
from devtools import docs
from devtools.fleet import SERVICES


def test_asyncapi_file_is_current() -> None:
    assert docs.ASYNCAPI_FILE.read_text() == docs.render_asyncapi(), "stale: run `make docs`"


def test_readme_diagram_is_current() -> None:
    current = docs.README.read_text()
    assert docs.render_readme(current) == current, "stale: run `make docs`"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("service", [None, *(spec.name for spec in SERVICES)])
def test_every_reference_resolves(service: str | None) -> None:
    document = asyncapi_document(service)
    json.dumps(document)  # serialisable as served
    for ref in _refs(document):
        _resolve(document, ref)


def test_fleet_document_has_an_operation_per_publisher_and_consumer() -> None:
    operations = asyncapi_document()["operations"]
    sends = {
        (op["x-publisher"], ref.rsplit("/", 1)[-1])
        for op in operations.values()
        if op["action"] == "send"
        for ref in (op["messages"][0]["$ref"],)
    }
    assert sends == {(p, route.event.type_name()) for route in ROUTES for p in route.publishers}
    receives = {op["x-consumer"] for op in operations.values() if op["action"] == "receive"}
    assert receives == {queue.consumer for queue in QUEUES}


def test_a_service_document_holds_only_its_own_operations() -> None:
    operations = asyncapi_document("emailservice")["operations"]
    assert list(operations) == ["emailservice.receive.user_registered_queue"]
    user = asyncapi_document("userservice")
    assert list(user["operations"]) == ["userservice.send.UserRegistered"]
    assert "user_registered_queue" in user["channels"], "a publisher sees where its events go"
