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
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from devtools.provision import provision
from tests.support.fleet import free_port
from tests.support.infra import Infra

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, without Debian's switch to the rabbitmq user
START_TIMEOUT_S = 90.0
VHOST = "faults"
DATABASE = "faults"


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda path: int(path.name))
    return versions[-1] / "bin"


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root, a developer may not.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


async def _run(*command: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{text}")
    return text


class PrivateRabbitMQ:
    """One RabbitMQ node (management and prometheus plugins on) that the suite may stop and start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.prometheus_port = free_port()
        self.node = f"faults{os.getpid()}@localhost"
        self._process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "rabbitmq-env.conf").write_text("")  # keep Debian's NODENAME out of it
        (root / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
            # Queue figures in the management API every half second, not every five, for the reconciliation.
            "collect_statistics_interval = 500\n"
        )

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root),  # its own Erlang cookie, shared by the node and rabbitmqctl
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbitmq.pid"),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    async def start(self) -> None:
        """Start the node and wait until its management API answers (the broker then takes connections)."""
        log = (self.root / "server.log").open("ab")
        self._process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(auth=("guest", "guest"), timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"RabbitMQ exited: {(self.root / 'server.log').read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.management_url}/api/overview")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError("the private RabbitMQ node did not start")

    async def stop(self) -> None:
        """A clean node shutdown, as `systemctl restart rabbitmq-server` begins with."""
        if self._process is None or self._process.poll() is not None:
            return
        await _run(str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node, "stop", env=self._environment())
        await self._reap()

    async def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._reap()

    async def _reap(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + 30
        while self._process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        # epmd may still list the node for a moment; the next start waits for the listener anyway.


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
        await _run(
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
        await _run(
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
        await _run(*_as_postgres_user(), str(_postgres_bin() / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

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
    rabbitmq: PrivateRabbitMQ
    postgres: PrivatePostgres


@contextlib.asynccontextmanager
async def private_infra(root: Path) -> AsyncIterator[PrivateInfra]:
    shutil.rmtree(root, ignore_errors=True)
    rabbitmq = PrivateRabbitMQ(root / "rabbitmq")
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
