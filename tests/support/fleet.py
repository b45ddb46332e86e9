"""Runs services as processes with the local runner's own commands (devtools/fleet.py, the Procfile).

Each service gets a free port (through its `<NAME>_PORT` variable, as the Procfile allows) and the
test run's vhost and database; every other variable is passed through, as honcho does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx

from devtools.fleet import SERVICES, SERVICES_BY_NAME, ServiceSpec
from tests.support.infra import Infra

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceFailedToStart(RuntimeError):
    pass


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
        self._replica_of: dict[str, str] = {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def environment(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        # The venv's executables (uvicorn), as `make` puts them on PATH for honcho.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(self._environment)
        env.update(self._overrides.get(self._replica_of.get(name, name), {}))
        env["RABBITMQ_URL"] = self.infra.rabbitmq_url
        env["DATABASE_URL"] = self.infra.database_url
        env["PYTHONUNBUFFERED"] = "1"
        for service_name in self.services:
            env[SERVICES_BY_NAME[service_name].port_variable] = str(self.ports[service_name])
        if name in self._replica_of:
            env[SERVICES_BY_NAME[self._replica_of[name]].port_variable] = str(self.ports[name])
        return env

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

    async def start(self, *names: str) -> None:
        """Start the named services (all by default) and wait until each answers /ready with 200."""
        names = names or tuple(self.services)
        for name in names:
            if self.is_running(name):
                continue
            spec = self.services[self._replica_of.get(name, name)]
            log_file = self.log_path(name).open("ab")
            self._processes[name] = subprocess.Popen(
                ["/bin/sh", "-c", spec.command()],
                env=self.environment(name),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log_file.close()
        await asyncio.gather(*(self.wait_ready(name) for name in names))

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait for /ready to answer 200; return how long it took."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if not self.is_running(name):
                    raise ServiceFailedToStart(f"{name} exited:\n{self.log_tail(name)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url(name)}/ready")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.2)
        raise ServiceFailedToStart(f"{name} not ready after {timeout:.0f}s:\n{self.log_tail(name)}")

    async def restart(self, name: str, environment: Mapping[str, str] | None = None) -> None:
        """Stop `name` gracefully and start it again with `environment` on top of the fleet's own
        (e.g. a short SAGA_TIMEOUT_S for one test); `restart(name)` goes back to the fleet's settings."""
        await self.stop(name)
        self._overrides[name] = dict(environment or {})
        await self.start(name)

    async def start_replica(self, name: str, replica: int = 2) -> str:
        """Start another process of service `name` (same command and settings, a port of its own),
        as scaling it out would; return its name (for `url`, `stop`, `kill`)."""
        replica_name = f"{name}-{replica}"
        self._replica_of[replica_name] = name
        self.ports.setdefault(replica_name, free_port())
        await self.start(replica_name)
        return replica_name

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
