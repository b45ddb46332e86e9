"""Request values the fleet can store, publish and echo back, so bad input is a 422, never a 500.

Python strings hold anything JSON can spell; PostgreSQL and UTF-8 do not. A NUL character cannot be
stored in `text` (nor in `jsonb`), and an unpaired surrogate (`"\\ud800"` in JSON) cannot be encoded
as UTF-8 at all: neither the database, the broker's JSON nor our own answers could carry it. Integer
columns are 32 bits. API models use these types so such values are refused at the door, naming the
field, instead of failing deep inside a handler or a consumer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

# PostgreSQL `integer`, the type of every id column (and of the counts they are compared with).
MAX_DATABASE_INT = 2**31 - 1

_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def storable_text(value: str) -> str:
    """`value`, unless PostgreSQL `text` or UTF-8 cannot hold it (ValueError, which pydantic makes a 422)."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text: it contains an unpaired surrogate") from None
    return value


def storable_json(value: Any) -> Any:
    """`value` (parsed JSON), unless a key or string anywhere in it is not `storable_text`."""
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            storable_text(str(key))
            storable_json(item)
    elif isinstance(value, list | tuple):
        for item in value:
            storable_json(item)
    return value


def printable(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8 (unpaired surrogates spelled `\\udXXX`), so an
    error answer that echoes the offending input can itself be sent."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [printable(item) for item in value]
    return value


def not_blank(value: str) -> str:
    if not value:
        raise ValueError("must not be blank")
    return value


def trimmed_text(max_length: int, *, required: bool = True) -> Any:
    """Text stripped of surrounding whitespace. The length limits apply to the text as sent, which is
    what the OpenAPI schema documents (stripping first would accept a longer value than documented);
    a required text must not be blank once stripped."""
    checks = (AfterValidator(str.strip), AfterValidator(not_blank)) if required else (AfterValidator(str.strip),)
    return Annotated[str, StringConstraints(min_length=1 if required else 0, max_length=max_length), *checks, Storable]


def integer_text(value: Any) -> Any:
    """Path and query values arrive as text, and pydantic's lax int parsing also takes " 7", "\u00a07",
    "7_0", "+7" and "7.0": none of them an integer as the OpenAPI schema documents it."""
    if isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value):
        raise ValueError("must be an integer, written in decimal digits only")
    return value


# An integer path or query parameter: digits only (a JSON body's integers are checked by pydantic itself).
PlainInt = Annotated[int, BeforeValidator(integer_text)]

# After any StringConstraints in the same Annotated: their stripping must come first.
Storable = AfterValidator(storable_text)
StorableText = Annotated[str, Storable]
DatabaseId = Annotated[PlainInt, Field(ge=1, le=MAX_DATABASE_INT)]
