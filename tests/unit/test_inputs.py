"""Bad input is the client's error: values PostgreSQL or UTF-8 cannot hold are refused with a 422 that
can itself be sent, a value the database refuses is a 422 too, and a body FastAPI cannot decode is a
documented 400. Never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel, TypeAdapter, ValidationError

from common.database import is_dependency_failure, is_invalid_input, service_metadata
from common.inputs import (
    MAX_DATABASE_INT,
    DatabaseId,
    PlainInt,
    StorableText,
    printable,
    storable_json,
    storable_text,
    trimmed_text,
)
from common.service import create_service, document_malformed_bodies
from common.settings import ServiceSettings

LONE_SURROGATE = "\ud800"


@pytest.mark.parametrize("text", ["", "plain", "Grüße, 東京 🚀", "tab\tand\nnewline"])
def test_text_the_database_can_store_is_accepted(text: str) -> None:
    assert storable_text(text) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [("a\x00b", "NUL"), (f"a{LONE_SURROGATE}b", "unpaired surrogate"), ("\udc00", "unpaired surrogate")],
)
def test_text_the_database_cannot_store_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        storable_text(text)


def test_json_is_checked_all_the_way_down() -> None:
    fine = {"region": "EU", "limits": [1, 2.5, True, None, {"nested": ["ok"]}]}
    assert storable_json(fine) == fine
    for bad in ({"a": [{"b": "x\x00"}]}, {"a": {"key\x00": 1}}, [[LONE_SURROGATE]], {LONE_SURROGATE: 1}):
        with pytest.raises(ValueError, match=r"NUL|unpaired surrogate"):
            storable_json(bad)


def test_printable_spells_out_what_utf8_cannot_encode() -> None:
    echoed = {"input": {LONE_SURROGATE: ["x", f"a{LONE_SURROGATE}", 3, None]}, "loc": ("body", 0)}
    made_printable = printable(echoed)
    assert made_printable == {"input": {"\\ud800": ["x", "a\\ud800", 3, None]}, "loc": ["body", 0]}
    json.dumps(made_printable, ensure_ascii=False).encode("utf-8")  # sendable now


def test_a_database_id_fits_a_postgresql_integer() -> None:
    ids = TypeAdapter(DatabaseId)
    assert ids.validate_python(1) == 1
    assert ids.validate_python(MAX_DATABASE_INT) == MAX_DATABASE_INT
    for out_of_range in (0, -1, MAX_DATABASE_INT + 1, 2**63, -(2**63) - 1):
        with pytest.raises(ValidationError):
            ids.validate_python(out_of_range)


@pytest.mark.parametrize(
    "cause",
    [
        # asyncpg could not encode the argument (the value out of the column's range, or not UTF-8).
        asyncpg.exceptions._base.DataError("invalid input for query argument $1: 1099511627776 (out of range)"),
        asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
        asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        asyncpg.exceptions.NumericValueOutOfRangeError("integer out of range"),
    ],
)
def test_a_value_the_database_refuses_is_invalid_input_not_an_outage(cause: BaseException) -> None:
    assert is_invalid_input(cause)
    assert not is_dependency_failure(cause)


@pytest.mark.parametrize(
    "cause",
    [
        asyncpg.exceptions.UndefinedTableError('relation "nowhere" does not exist'),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_a_bug_or_an_outage_is_not_invalid_input(cause: BaseException) -> None:
    assert not is_invalid_input(cause)


def test_every_operation_that_takes_a_body_documents_the_400_for_an_undecodable_one() -> None:
    openapi: dict[str, Any] = {
        "paths": {
            "/things": {
                "get": {"responses": {"200": {"description": "OK"}}},
                "post": {"requestBody": {}, "responses": {"202": {"description": "Accepted"}}},
            },
            "/things/{id}": {"put": {"requestBody": {}, "responses": {"400": {"description": "Our own"}}}},
        }
    }
    documented = document_malformed_bodies(openapi)
    things = documented["paths"]["/things"]
    assert "400" not in things["get"]["responses"]
    assert things["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert documented["paths"]["/things/{id}"]["put"]["responses"]["400"] == {"description": "Our own"}
    assert "detail" in documented["components"]["schemas"]["ErrorResponse"]["properties"]


class Note(BaseModel):
    text: StorableText


router = APIRouter()


@router.post("/notes", status_code=201)
async def add_note(note: Note) -> Note:
    return note


@router.get("/refused/{kind}")
async def refused(kind: str) -> None:
    causes: dict[str, BaseException] = {
        "out-of-range": asyncpg.exceptions._base.DataError(
            f"invalid input for query argument $1: '{LONE_SURROGATE}' (out of int32 range)"
        ),
        "bug": asyncpg.exceptions.UndefinedColumnError('column "nope" does not exist'),
    }
    raise causes[kind]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The lifespan (database, broker) is not started: these routes use neither.
    app = create_service(
        ServiceSettings(service_name="inputstest"),
        title="inputs",
        description="bad input",
        metadata=service_metadata("inputstest"),
        routers=[router],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        yield http


async def test_text_that_utf8_cannot_encode_is_a_sendable_422(client: httpx.AsyncClient) -> None:
    # JSON may spell an unpaired surrogate; FastAPI echoes the input in its 422, which must still encode.
    for body in ('{"text": "\\ud800"}', '{"text": "a\\u0000"}', '{"\\udfff": 1}'):
        response = await client.post("/notes", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"][0]["msg"]
    accepted = await client.post("/notes", json={"text": "Grüße 🚀"})
    assert accepted.status_code == 201
    assert accepted.json() == {"text": "Grüße 🚀"}


async def test_a_body_that_is_not_utf8_is_a_400_with_a_message(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/notes", content=b'{"text": "\xff\xfe\xfd"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"]
    documented = (await client.get("/openapi.json")).json()["paths"]["/notes"]["post"]["responses"]
    assert "400" in documented


async def test_a_value_the_database_refuses_is_a_422_in_fastapis_format(client: httpx.AsyncClient) -> None:
    response = await client.get("/refused/out-of-range")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["msg"].startswith("the database cannot store a value of this request: invalid input")
    assert "\\ud800" in error["msg"]


async def test_a_database_error_that_is_a_bug_stays_a_500(client: httpx.AsyncClient) -> None:
    response = await client.get("/refused/bug")
    assert response.status_code == 500


def test_trimmed_text_checks_the_documented_length_on_the_text_as_sent() -> None:
    text = TypeAdapter(trimmed_text(5))
    assert text.validate_python("  ab ") == "ab"
    assert text.json_schema() == {"type": "string", "minLength": 1, "maxLength": 5}
    # Stripping first would accept this 11-character value against a documented maxLength of 5.
    with pytest.raises(ValidationError, match="at most 5 characters"):
        text.validate_python("\x0c" * 10 + "a")
    with pytest.raises(ValidationError, match="must not be blank"):
        text.validate_python("   ")
    with pytest.raises(ValidationError, match="NUL"):
        text.validate_python("a\x00")


def test_optional_trimmed_text_may_be_blank() -> None:
    assert TypeAdapter(trimmed_text(5, required=False)).validate_python("   ") == ""


@pytest.mark.parametrize("text", [" 7", "\u00a07", "7_0", "+7", "7.0", "\u0667", ""])
def test_integer_parameters_take_decimal_digits_only(text: str) -> None:
    # pydantic's lax parsing would read most of these as 7 or 70; the OpenAPI schema says integer.
    with pytest.raises(ValidationError, match="decimal digits only"):
        TypeAdapter(PlainInt).validate_python(text)


def test_integer_parameters_as_text_and_as_numbers() -> None:
    assert TypeAdapter(PlainInt).validate_python("42") == 42
    assert TypeAdapter(PlainInt).validate_python("-3") == -3
    assert TypeAdapter(DatabaseId).validate_python(7) == 7
