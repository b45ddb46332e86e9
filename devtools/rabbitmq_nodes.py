"""RabbitMQ nodes of a run's own, on free ports in a folder of their own: one node for the fault suite,
three clustered for `make cluster` and the cluster tests.

Each runs the Debian package's scripts directly (without its switch to the rabbitmq user), with its
own configuration, data, logs, distribution port and Erlang cookie, so it never touches the machine's
shared broker. The nodes of a cluster share one cookie, and join the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, without Debian's switch to the rabbitmq user
START_TIMEOUT_S = 90.0
# Each quorum queue member holds file handles: a node at the usual soft limit of 1024 stops taking
# connections once a few hundred exist (README, Prerequisites).
FILE_LIMIT = 65536


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(*command: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{text}")
    return text


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILE_LIMIT if hard == resource.RLIM_INFINITY else min(FILE_LIMIT, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class RabbitNode:
    """One RabbitMQ node (management and prometheus plugins on) that its owner may stop, kill and start."""

    def __init__(self, root: Path, *, name: str | None = None, cookie: str | None = None) -> None:
        self.root = root
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.prometheus_port = free_port()
        self.dist_port = free_port()
        self.node = f"{name or f'node{os.getpid()}'}@localhost"
        self._process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        cookie_file = root / ".erlang.cookie"
        cookie_file.write_text(cookie or secrets.token_hex(16))
        cookie_file.chmod(0o400)
        (root / "rabbitmq-env.conf").write_text("")  # keep Debian's NODENAME out of it
        (root / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
            # Queue figures in the management API every half second, not every five, for reconciliations.
            "collect_statistics_interval = 500\n"
        )

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def amqp_url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def environment(self) -> dict[str, str]:
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
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    async def ctl(self, *arguments: str, timeout: float = 60.0) -> str:
        command = (str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node, *arguments)
        return await run(*command, env=self.environment(), timeout=timeout)

    async def start(self) -> None:
        """Start the node and wait until its management API answers (the broker then takes connections)."""
        log = (self.root / "server.log").open("ab")
        self._process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_raise_file_limit,
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
        raise RuntimeError(f"RabbitMQ node {self.node} did not start")

    async def stop(self) -> None:
        """A clean node shutdown, as `systemctl restart rabbitmq-server` begins with."""
        if not self.is_running:
            return
        await self.ctl("stop")
        await self._reap()

    async def kill(self) -> None:
        if self.is_running:
            assert self._process is not None
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


class LocalCluster:
    """Three RabbitMQ nodes on this machine, clustered: quorum queues declared on it have a replica on
    each, so any one node may go down."""

    def __init__(self, root: Path, *, size: int = 3) -> None:
        cookie = secrets.token_hex(16)
        tag = f"{os.getpid()}x{secrets.token_hex(2)}"
        self.nodes = [
            RabbitNode(root / f"node{index}", name=f"cluster{index}n{tag}", cookie=cookie) for index in range(size)
        ]

    def amqp_urls(self, vhost: str) -> list[str]:
        return [node.amqp_url(vhost) for node in self.nodes]

    async def start(self) -> None:
        """Start every node; the others join the first."""
        first, *others = self.nodes
        async with asyncio.TaskGroup() as starting:  # one node failing to start stops the others starting
            for node in self.nodes:
                starting.create_task(node.start())
        for node in others:
            await node.ctl("stop_app")
            await node.ctl("join_cluster", first.node)
            await node.ctl("start_app")

    async def add_vhost(self, vhost: str) -> None:
        async with httpx.AsyncClient(auth=("guest", "guest"), timeout=10.0) as client:
            response = await client.put(f"{self.nodes[0].management_url}/api/vhosts/{vhost}")
            response.raise_for_status()

    async def close(self) -> None:
        await asyncio.gather(*(node.kill() for node in self.nodes))


@contextlib.asynccontextmanager
async def local_cluster(root: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(root)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()


async def _serve_cluster(root: Path, vhost: str) -> None:
    async with local_cluster(root) as cluster:
        await cluster.add_vhost(vhost)
        first, *others = cluster.amqp_urls(vhost)
        print("A 3-node RabbitMQ cluster is running (Ctrl-C stops it). Start the fleet on it with:", flush=True)
        print(
            f"  RABBITMQ_URL={first} RABBITMQ_FAILOVER_URLS={','.join(others)} "
            f"RABBITMQ_MANAGEMENT_URL={cluster.nodes[0].management_url} make run",
            flush=True,
        )
        for node in cluster.nodes:
            print(f"  {node.node}: AMQP {node.amqp_port}, management {node.management_url}", flush=True)
        stopped = asyncio.Event()
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(stop_signal, stopped.set)
        await stopped.wait()  # then the nodes are killed: they run in sessions of their own


def main() -> None:
    """`make cluster`: three clustered nodes in .cluster/ until Ctrl-C (or SIGTERM)."""
    asyncio.run(_serve_cluster(Path(".cluster").resolve(), "fleet"))


if __name__ == "__main__":
    main()
