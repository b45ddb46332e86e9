"""Request values the fleet can store, publish and echo back, so bad input is a 422, never a 500.

Python strings hold anything JSON can spell; PostgreSQL and UTF-8 do not. A NUL character cannot be
stored in `text` (nor in `jsonb`), and an unpaired surrogate (`"\\ud800"` in JSON) cannot be encoded
as UTF-8 at all: neither the database, the broker's JSON nor our own answers could carry it. Integer
columns are 32 bits. API models use these types so such values are refused at the door, naming the
field, instead of failing deep inside a handler or a consumer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field

# PostgreSQL `integer`, the type of every id column (and of the counts they are compared with).
MAX_DATABASE_INT = 2**31 - 1


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


# After any StringConstraints in the same Annotated: their stripping must come first.
Storable = AfterValidator(storable_text)
StorableText = Annotated[str, Storable]
DatabaseId = Annotated[int, Field(ge=1, le=MAX_DATABASE_INT)]
