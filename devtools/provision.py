"""Create (or remove) the RabbitMQ vhost and the PostgreSQL database a fleet runs against.

`make run` calls `python -m devtools.provision` with the fleet's RABBITMQ_URL and DATABASE_URL;
the test suite uses the same functions to give every run a vhost and a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import httpx

from common.settings import ServiceSettings


class ProvisionSettings(ServiceSettings):
    service_name: str = "provision"
    rabbitmq_management_url: str = "http://127.0.0.1:15672"


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def credentials_of(amqp_url: str) -> tuple[str, str]:
    parts = urlsplit(amqp_url)
    return unquote(parts.username or "guest"), unquote(parts.password or "guest")


def database_of(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


def admin_dsn(database_url: str) -> str:
    """A plain libpq DSN for the server's `postgres` database (to create or drop others)."""
    parts = urlsplit(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return parts._replace(path="/postgres").geturl()


def management_client(settings: ProvisionSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.rabbitmq_management_url,
        auth=credentials_of(settings.rabbitmq_url),
        timeout=10.0,
    )


async def ensure_vhost(settings: ProvisionSettings) -> None:
    vhost = quote(vhost_of(settings.rabbitmq_url), safe="")
    user = quote(credentials_of(settings.rabbitmq_url)[0], safe="")
    async with management_client(settings) as client:
        (await client.put(f"/api/vhosts/{vhost}")).raise_for_status()
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        (await client.put(f"/api/permissions/{vhost}/{user}", json=permissions)).raise_for_status()


async def delete_vhost(settings: ProvisionSettings) -> None:
    vhost = vhost_of(settings.rabbitmq_url)
    if vhost == "/":
        raise ValueError("refusing to delete the default vhost")
    async with management_client(settings) as client:
        response = await client.delete(f"/api/vhosts/{quote(vhost, safe='')}")
        if response.status_code != 404:
            response.raise_for_status()


async def ensure_database(settings: ProvisionSettings) -> None:
    name = database_of(settings.database_url)
    connection = await asyncpg.connect(admin_dsn(settings.database_url))
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_database(settings: ProvisionSettings) -> None:
    name = database_of(settings.database_url)
    if name in ("postgres", "template0", "template1"):
        raise ValueError(f"refusing to drop {name}")
    connection = await asyncpg.connect(admin_dsn(settings.database_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def provision(settings: ProvisionSettings) -> None:
    await asyncio.gather(ensure_vhost(settings), ensure_database(settings))


async def deprovision(settings: ProvisionSettings) -> None:
    await asyncio.gather(delete_vhost(settings), drop_database(settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--remove", action="store_true", help="delete the vhost and drop the database instead")
    parser.add_argument(
        "--database-only", action="store_true", help="the database alone (the synchronous fleet uses no broker)"
    )
    args = parser.parse_args()
    settings = ProvisionSettings()
    verb = "removed" if args.remove else "ready"
    if args.database_only:
        asyncio.run(drop_database(settings) if args.remove else ensure_database(settings))
        print(f"database {database_of(settings.database_url)!r} {verb}")
        return
    asyncio.run(deprovision(settings) if args.remove else provision(settings))
    print(f"vhost {vhost_of(settings.rabbitmq_url)!r} and database {database_of(settings.database_url)!r} {verb}")


if __name__ == "__main__":
    main()
