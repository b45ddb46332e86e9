"""A vhost and a database of its own for every test run, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import httpx

from devtools.provision import ProvisionSettings, admin_dsn, deprovision, management_client, provision

RUN_PREFIX = "test_"
# RabbitMQ reserves about three file handles per quorum queue, and one that has run out of them takes new
# sockets without ever answering: the suite would hang, not fail. A run declares a few hundred queues.
MIN_BROKER_FILE_LIMIT = 4096


@dataclass(frozen=True)
class Infra:
    rabbitmq_url: str
    database_url: str
    management_url: str
    vhost: str
    database: str
    # The other nodes of a cluster, which services fail over to (RABBITMQ_FAILOVER_URLS).
    rabbitmq_failover_urls: tuple[str, ...] = ()

    def provision_settings(self) -> ProvisionSettings:
        return ProvisionSettings(
            rabbitmq_url=self.rabbitmq_url,
            database_url=self.database_url,
            rabbitmq_management_url=self.management_url,
        )


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{path}"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_orphan(name: str) -> bool:
    """Runs are named test_<pid>_<random>: an orphan is one whose pytest process is gone."""
    parts = name.split("_")
    return len(parts) == 3 and parts[0] + "_" == RUN_PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1]))


async def check_broker_file_limit(base: ProvisionSettings) -> None:
    async with management_client(base) as client:
        response = await client.get("/api/nodes")
        response.raise_for_status()
    for node in response.json():
        if node.get("fd_total", MIN_BROKER_FILE_LIMIT) < MIN_BROKER_FILE_LIMIT:
            raise RuntimeError(
                f"RabbitMQ node {node['name']} may open only {node['fd_total']} files; the suite's quorum queues"
                f" need a limit of at least {MIN_BROKER_FILE_LIMIT}: restart it with a higher `ulimit -n`"
                " (.ci/run shows how)"
            )


async def remove_orphans(base: ProvisionSettings) -> None:
    """Delete vhosts and databases left by runs that were killed before their teardown."""
    async with management_client(base) as client:
        response = await client.get("/api/vhosts")
        response.raise_for_status()
        for vhost in response.json():
            if _is_orphan(vhost["name"]):
                await client.delete(f"/api/vhosts/{quote(vhost['name'], safe='')}")
    connection = await asyncpg.connect(admin_dsn(base.database_url))
    try:
        names = await connection.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%'")
        for row in names:
            if _is_orphan(row["datname"]):
                await connection.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def isolated_infra() -> AsyncIterator[Infra]:
    base = ProvisionSettings()  # the host, port and credentials of the local broker and database
    run_id = f"{RUN_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    infra = Infra(
        rabbitmq_url=_with_path(base.rabbitmq_url, run_id),
        database_url=_with_path(base.database_url, run_id),
        management_url=base.rabbitmq_management_url,
        vhost=run_id,
        database=run_id,
    )
    try:
        await remove_orphans(base)
        await check_broker_file_limit(base)
    except (httpx.HTTPError, OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            "the tests need RabbitMQ (with the management plugin) and PostgreSQL running locally: " + repr(exc)
        ) from exc
    await provision(infra.provision_settings())
    try:
        yield infra
    finally:
        await asyncio.shield(deprovision(infra.provision_settings()))
