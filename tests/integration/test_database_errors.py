"""What PostgreSQL refuses in a request's values is the client's error (422), not an outage (503) and
not a bug (500): checked on the errors the real driver and server raise."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from common.database import Database, is_dependency_failure, is_invalid_input
from common.sql import Statement

pytestmark = pytest.mark.integration


async def refusal(database: Database, statement: str, value: Any) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which error is what the test looks at
        await database.fetch(Statement(text(statement)), value=value)
    return caught.value


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        ("SELECT CAST(:value AS integer)", 2**31),  # asyncpg cannot encode it as int4
        ("SELECT CAST(:value AS bigint)", 2**64),
        ("SELECT CAST(:value AS text)", "a\x00b"),  # the server refuses NUL in text
        ("SELECT CAST(:value AS text)", "a\ud800b"),  # not UTF-8 at all
        ("SELECT CAST(CAST(:value AS text) AS jsonb)", '{"a": "\\u0000"}'),  # nor in jsonb
        ("SELECT CAST(:value AS integer) * 2", 2**31 - 1),  # the server's own overflow
    ],
)
async def test_a_value_postgresql_refuses_is_invalid_input(database: Database, statement: str, value: Any) -> None:
    error = await refusal(database, statement, value)
    assert is_invalid_input(error), repr(error)
    assert not is_dependency_failure(error), repr(error)


async def test_a_wrong_statement_is_not_invalid_input(database: Database) -> None:
    error = await refusal(database, "SELECT nope FROM nowhere WHERE 1 = :value", 1)
    assert not is_invalid_input(error)
    assert not is_dependency_failure(error)
