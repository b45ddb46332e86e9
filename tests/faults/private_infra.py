"""A RabbitMQ node and a PostgreSQL cluster of the fault suite's own, on free ports in a temporary folder.

The suite stops, kills and restarts them mid-load; doing that to the machine's shared broker and
database would break every other test run (and developer) using them. Both come from the same
Debian packages as the shared ones, so what survives here survives there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from devtools.provision import provision
from devtools.rabbitmq_nodes import RabbitNode, free_port, run
from tests.support.infra import Infra

VHOST = "faults"
DATABASE = "faults"


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda path: int(path.name))
    return versions[-1] / "bin"


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root, a developer may not.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """One PostgreSQL cluster that the suite may crash (`pg_ctl stop -m immediate`) and start again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()

    async def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        await run(
            *_as_postgres_user(),
            str(_postgres_bin() / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    async def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200 -c fsync=off"
        await run(
            *_as_postgres_user(),
            str(_postgres_bin() / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    async def crash(self) -> None:
        """Stop without a checkpoint, as a killed server: the next start runs crash recovery."""
        await self._stop("immediate")

    async def stop(self) -> None:
        await self._stop("fast")

    async def _stop(self, mode: str) -> None:
        await run(*_as_postgres_user(), str(_postgres_bin() / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    async def accepts_connections(self) -> bool:
        try:
            connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", timeout=2)
        except (OSError, asyncpg.PostgresError):
            return False
        await connection.close()
        return True


@dataclass(frozen=True)
class PrivateInfra:
    infra: Infra
    rabbitmq: RabbitNode
    postgres: PrivatePostgres


@contextlib.asynccontextmanager
async def private_infra(root: Path) -> AsyncIterator[PrivateInfra]:
    shutil.rmtree(root, ignore_errors=True)
    rabbitmq = RabbitNode(root / "rabbitmq", name=f"faults{os.getpid()}")
    postgres = PrivatePostgres(root / "postgres")
    try:
        await postgres.init()
        await asyncio.gather(rabbitmq.start(), postgres.start())
        infra = Infra(
            rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{rabbitmq.amqp_port}/{VHOST}",
            database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{postgres.port}/{DATABASE}",
            management_url=rabbitmq.management_url,
            vhost=VHOST,
            database=DATABASE,
        )
        await provision(infra.provision_settings())
        yield PrivateInfra(infra=infra, rabbitmq=rabbitmq, postgres=postgres)
    finally:
        await rabbitmq.kill()
        with contextlib.suppress(RuntimeError):
            await postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
