"""SQL written once with SQLAlchemy Core, compiled once, executed on asyncpg.

Statements stay SQLAlchemy expressions over the services' tables (readable, checked against the schema
when they are built), but each is compiled to PostgreSQL's `$n` form when its module is imported, and
an execution only binds values: asyncpg prepares it once per connection and reuses it. Measured on the
benchmark machine, a transaction of three statements cost 620 us of client CPU through SQLAlchemy's
async engine and 165 us this way; the difference was SQLAlchemy's per-execution work (cache keys,
parameter and result processing, the greenlet bridge), which this skips.

    RESERVE = Statement(
        update(stock)
        .where(stock.c.product_id == bindparam("product_id"), stock.c.available >= bindparam("quantity"))
        .values(available=stock.c.available - bindparam("quantity"))
        .returning(stock.c.available)
    )
    available = await connection.fetchval(RESERVE, product_id=7, quantity=2)

Values are named by the statement's `bindparam`s; constants written into the statement are bound
for you. Rows come back as asyncpg `Record`s (`row["name"]`, `dict(row)`). SQLAlchemy compiles an
`IN` list for each execution, so write `column == any_(array(["a", "b"]))` (constants) or
`column == any_(bindparam(name, type_=ARRAY(...)))` (a list given per call) instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

_DIALECT = asyncpg_dialect()
# Every statement compiled in this process, so a new connection can prepare them before it serves.
_COMPILED: list[Statement] = []


class Statement:
    """One statement, compiled for asyncpg when it is created."""

    __slots__ = ("_constants", "_names", "_required", "sql")

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError(
                "an IN list is compiled per execution: write `column == any_(array(values))` or "
                f"`column == any_(bindparam(name, type_=ARRAY(...)))` instead\n{compiled}"
            )
        self.sql = str(compiled)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())
        binds = compiled.binds
        self._required = frozenset(name for name in self._names if binds[name].required)
        self._constants = {name: value for name, value in compiled.params.items() if name not in self._required}
        _COMPILED.append(self)

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for `values`, constants filled in."""
        if missing := self._required - values.keys():
            raise TypeError(f"no value for {sorted(missing)} in\n{self.sql}")
        if unknown := values.keys() - self._names:
            raise TypeError(f"{sorted(unknown)} are not parameters of\n{self.sql}")
        constants = self._constants
        return [values[name] if name in values else constants[name] for name in self._names]

    def __repr__(self) -> str:
        return f"Statement({self.sql!r})"


def compiled_statements() -> tuple[Statement, ...]:
    return tuple(_COMPILED)


class Connection:
    """A database connection that runs `Statement` objects (one round trip each)."""

    __slots__ = ("raw",)

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    async def execute(self, statement: Statement, /, **values: Any) -> str:
        """Run `statement`; return PostgreSQL's command tag (`UPDATE 1`)."""
        return str(await self.raw.execute(statement.sql, *statement.arguments(values)))

    async def executemany(self, statement: Statement, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run `statement` once per row of values, pipelined in one round trip."""
        await self.raw.executemany(statement.sql, [statement.arguments(row) for row in rows])

    async def fetch(self, statement: Statement, /, **values: Any) -> list[asyncpg.Record]:
        return list(await self.raw.fetch(statement.sql, *statement.arguments(values)))

    async def fetchrow(self, statement: Statement, /, **values: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.raw.fetchrow(statement.sql, *statement.arguments(values))
        return row

    async def fetchval(self, statement: Statement, /, **values: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        return await self.raw.fetchval(statement.sql, *statement.arguments(values))


def affected_rows(command_tag: str) -> int:
    """The row count of a command tag such as `UPDATE 3` or `INSERT 0 1`."""
    return int(command_tag.rsplit(" ", 1)[-1])
