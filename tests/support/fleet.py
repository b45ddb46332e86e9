"""Runs services as processes with the local runner's own commands (devtools/fleet.py, the Procfile).

Each service gets a free port (through its `<NAME>_PORT` variable, as the Procfile allows) and the
test run's vhost and database; every other variable is passed through, as honcho does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from devtools.fleet import SERVICES, SERVICES_BY_NAME, ServiceSpec
from devtools.rabbitmq_nodes import free_port
from tests.support.infra import Infra

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def port_is_free(port: int) -> bool:
    """Whether a service could listen on `port` now. With SO_REUSEADDR, as uvicorn binds: the connections a
    stopped service leaves in TIME_WAIT do not take its port away (the synchronous fleet's peers keep
    calling it there)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds the listening socket on `port` (Linux: /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    listening.add(f"socket:[{fields[9]}]")
    with contextlib.suppress(OSError):
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(descriptor) in listening:
                    return True
    return False


class ServiceFailedToStart(RuntimeError):
    pass


@dataclass
class Outage:
    """Service `service` was down: signalled to stop (or killed) at `down_at`, ready again at `up_at`
    (None while it is still down). Wall-clock times, comparable with the database's timestamps."""

    service: str
    down_at: datetime
    up_at: datetime | None = None


class Fleet:
    def __init__(
        self,
        infra: Infra,
        log_dir: Path,
        environment: Mapping[str, str] | None = None,
        services: Iterable[ServiceSpec] = SERVICES,
    ) -> None:
        self.infra = infra
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.services = {service.name: service for service in services}
        self.ports = {name: free_port() for name in self.services}
        self._environment = dict(environment or {})
        self._overrides: dict[str, dict[str, str]] = {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        # Every stop and kill of a running service, and when it was ready again (the fault suite's record).
        self.outages: list[Outage] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def environment(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        # The venv's executables (uvicorn), as `make` puts them on PATH for honcho.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(self._environment)
        env.update(self._overrides.get(name, {}))
        env["RABBITMQ_URL"], env["RABBITMQ_FAILOVER_URLS"] = self._broker_addresses(name)
        env["DATABASE_URL"] = self.infra.database_url
        env["PYTHONUNBUFFERED"] = "1"
        for service_name, port in self.ports.items():
            if service_name in SERVICES_BY_NAME:
                env[SERVICES_BY_NAME[service_name].port_variable] = str(port)
        # Where the synchronous fleet's calls go (the asynchronous fleet does not read it).
        env["SERVICE_PORTS"] = json.dumps({n: p for n, p in self.ports.items() if n in SERVICES_BY_NAME})
        env[self.services[name].port_variable] = str(self.ports[name])  # a replica's own port
        return env

    def _broker_addresses(self, name: str) -> tuple[str, str]:
        """(first node, the others) for service `name`: on a cluster the services are spread over the nodes,
        as a load balancer in front of them would, so losing one node costs only some of them their
        connection."""
        urls = (self.infra.rabbitmq_url, *self.infra.rabbitmq_failover_urls)
        shift = list(self.services).index(name) % len(urls)
        first, *others = urls[shift:] + urls[:shift]
        return first, ",".join(others)

    def add_replica(self, name: str) -> str:
        """Register one more instance of service `name` (same vhost and database, a port of its own) and
        return the name to `start`, `stop`, `kill` and `url` it by, e.g. `analyticsservice#2`."""
        index = 2
        while f"{name}#{index}" in self.services:
            index += 1
        replica = f"{name}#{index}"
        self.services[replica] = self.services[name]
        self.ports[replica] = free_port()
        return replica

    @contextlib.asynccontextmanager
    async def reconfigured(self, name: str, environment: Mapping[str, str]) -> AsyncIterator[None]:
        """Restart `name` with `environment` added for the duration of the block, then restart it as it was."""
        await self.stop(name)
        try:
            await self.start(name, environment=environment)
            yield
        finally:
            await self.stop(name)
            await self.start(name)

    def worker_processes(self, name: str) -> list[int]:
        """Ids of the worker processes `name` started with multiprocessing (its `spawn` children)."""
        parent = self.pid(name)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
            parent_of_entry = int(stat.rsplit(")", 1)[1].split()[1])
            if parent_of_entry == parent and "spawn_main" in command:
                found.append(int(entry.name))
        return found

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def is_running(self, name: str) -> bool:
        process = self._processes.get(name)
        return process is not None and process.poll() is None

    def pid(self, name: str) -> int:
        return self._processes[name].pid

    async def start(self, *names: str, environment: Mapping[str, str] | None = None) -> None:
        """Start the named services (all by default) and wait until each answers /ready with 200.
        `environment` is added to theirs until they are started again without it."""
        names = names or tuple(name for name in self.services if name in SERVICES_BY_NAME)
        for name in names:
            if self.is_running(name):
                continue
            self._overrides[name] = dict(environment or {})
            if not port_is_free(self.ports[name]):
                # Released by an earlier stop and taken since (other test runs share the machine).
                self.ports[name] = free_port()
            log_file = self.log_path(name).open("ab")
            self._processes[name] = subprocess.Popen(
                ["/bin/sh", "-c", self.services[name].command()],
                env=self.environment(name),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log_file.close()
        await asyncio.gather(*(self._wait_back(name) for name in names))

    async def _wait_back(self, name: str) -> None:
        await self.wait_ready(name)
        for outage in self.outages:
            if outage.service == name and outage.up_at is None:
                outage.up_at = datetime.now(UTC)

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait for /ready to answer 200 from this very process (not another run's service that took
        the port meanwhile); return how long it took. URLs can change across restarts: use `url()`."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if not self.is_running(name):
                    raise ServiceFailedToStart(f"{name} exited:\n{self.log_tail(name)}")
                with contextlib.suppress(httpx.HTTPError):
                    if listens_on(self.pid(name), self.ports[name]) and (
                        (await client.get(f"{self.url(name)}/ready")).status_code == 200
                    ):
                        return time.monotonic() - started
                await asyncio.sleep(0.2)
        raise ServiceFailedToStart(f"{name} not ready after {timeout:.0f}s:\n{self.log_tail(name)}")

    async def restart(self, name: str, environment: Mapping[str, str] | None = None) -> None:
        """Stop `name` gracefully and start it again with `environment` on top of the fleet's own
        (e.g. a short SAGA_TIMEOUT_S for one test); `restart(name)` goes back to the fleet's settings."""
        await self.stop(name)
        await self.start(name, environment=environment)

    async def start_replica(self, name: str) -> str:
        """Start another process of service `name` with the settings `name` runs with now, as scaling
        it out would; return its name (for `url`, `stop`, `kill`)."""
        replica = self.add_replica(name)
        await self.start(replica, environment=self._overrides.get(name))
        return replica

    async def stop(self, name: str) -> None:
        """Graceful stop (SIGTERM, as Ctrl-C under honcho): in-flight work finishes first."""
        await self._signal_and_wait(name, signal.SIGTERM, STOP_TIMEOUT_S)

    async def kill(self, name: str) -> None:
        """SIGKILL: the process dies holding whatever it had not acknowledged."""
        await self._signal_and_wait(name, signal.SIGKILL, STOP_TIMEOUT_S)

    async def _signal_and_wait(self, name: str, sig: signal.Signals, timeout: float) -> None:
        process = self._processes.get(name)
        if process is None or process.poll() is not None:
            return
        self.outages.append(Outage(name, datetime.now(UTC)))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self._processes)))
