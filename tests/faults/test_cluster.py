"""The fleet on a 3-node RabbitMQ cluster on this machine (the one `make cluster` starts): every quorum queue
has a replica on each node, a publisher keeps publishing when its node dies, and the whole fleet loses a
node, or has all three restarted one after another, under the mixed load without losing, duplicating or
refusing anything (reconciled as the single-node faults are, with rows in the same report)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from common.broker import Broker, BrokerUnavailable
from common.events import UserRegistered
from common.settings import ServiceSettings
from common.topology import QUEUES, USER_REGISTERED
from devtools.provision import provision
from devtools.rabbitmq_nodes import LocalCluster, RabbitNode, local_cluster
from tests.e2e.conftest import ARTIFACTS
from tests.faults.conftest import FAULT_FLEET_ENVIRONMENT, FaultReport
from tests.faults.harness import OUTAGE_S, Inject, all_ready, dead_letters, run_fault
from tests.faults.load import Ledger
from tests.faults.private_infra import PrivateInfra
from tests.faults.reconcile import SERVICE_SCHEMAS, asyncpg_dsn
from tests.support.fleet import Fleet
from tests.support.infra import Infra
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults

VHOST = "cluster"
DATABASE = "cluster"
PUBLISHER_VHOST = "publisher"  # the publisher test's own, away from the fleet's queues
# An outbox row this old means its publish is not getting through (the relay takes a row at once).
STUCK_OUTBOX_ROW_S = 2.0
RELAY_BOUND_S = 15.0


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("rabbitmq-cluster")
    async with local_cluster(root) as running:
        for vhost in (VHOST, PUBLISHER_VHOST):
            await running.add_vhost(vhost)
        yield running


def _cluster_infra(cluster: LocalCluster, vhost: str) -> Infra:
    """The broker side of `vhost` on the cluster (first node, the others to fail over to); no database."""
    first, *others = cluster.amqp_urls(vhost)
    return Infra(
        rabbitmq_url=first,
        rabbitmq_failover_urls=tuple(others),
        database_url="",
        management_url=cluster.nodes[0].management_url,
        vhost=vhost,
        database="",
    )


@pytest.fixture(scope="module")
async def cluster_private(cluster: LocalCluster, private: PrivateInfra) -> PrivateInfra:
    """The cluster's vhost and a database of its own on the fault suite's PostgreSQL."""
    infra = dataclasses.replace(
        _cluster_infra(cluster, VHOST),
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{private.postgres.port}/{DATABASE}",
        database=DATABASE,
    )
    await provision(infra.provision_settings())
    return PrivateInfra(infra=infra, rabbitmq=cluster.nodes[0], postgres=private.postgres)


@pytest.fixture(scope="module")
async def cluster_fleet(cluster_private: PrivateInfra) -> AsyncIterator[Fleet]:
    running = Fleet(
        cluster_private.infra, ARTIFACTS / f"cluster-{datetime.now(UTC):%Y%m%dT%H%M%S}", FAULT_FLEET_ENVIRONMENT
    )
    try:
        await running.start()
        yield running
    finally:
        await running.close()


def _management_on(infra: Infra, node: RabbitNode) -> Management:
    return Management(dataclasses.replace(infra, management_url=node.management_url))


def _others(cluster: LocalCluster, node: RabbitNode) -> list[RabbitNode]:
    return [other for other in cluster.nodes if other is not node]


async def _queues_by_leader(management: Management) -> Counter[str]:
    return Counter(queue["leader"] for queue in await management.queues() if queue.get("leader"))


async def _every_member_online(management: Management, size: int) -> bool:
    queues = await management.queues()
    return bool(queues) and all(len(queue.get("online", ())) == size for queue in queues)


async def _wait_until_whole(cluster: LocalCluster, infra: Infra, via: RabbitNode) -> None:
    """Every queue of `infra`'s vhost has a running member on each node again."""
    management = _management_on(infra, via)
    try:
        await eventually(
            lambda: _every_member_online(management, len(cluster.nodes)),
            timeout=60,
            interval=0.5,
            message="quorum queues did not get all their members back",
        )
    finally:
        await management.close()


async def _oldest_outbox_row_s(infra: Infra) -> float:
    connection = await asyncpg.connect(asyncpg_dsn(infra))
    try:
        ages = [
            await connection.fetchval(
                f"SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float FROM {schema}.outbox"
            )
            for schema in SERVICE_SCHEMAS
        ]
    finally:
        await connection.close()
    return max(ages)


async def _relaying(infra: Infra) -> bool:
    return await _oldest_outbox_row_s(infra) < STUCK_OUTBOX_ROW_S


async def test_every_queue_has_a_replica_on_each_node(cluster: LocalCluster) -> None:
    urls = cluster.amqp_urls(VHOST)
    broker = Broker(ServiceSettings(service_name="clustertest", rabbitmq_url=urls[0]))
    await broker.connect()  # declares the whole message map
    await broker.close()
    node_names = {node.node for node in cluster.nodes}
    management = _management_on(_cluster_infra(cluster, VHOST), cluster.nodes[0])
    try:
        queues = {queue["name"]: queue for queue in await management.queues()}
    finally:
        await management.close()
    for queue in QUEUES:
        assert set(queues[queue.name]["members"]) == node_names, queue.name
        assert set(queues[queue.dead_letter_queue]["members"]) == node_names, queue.dead_letter_queue


async def test_a_publisher_whose_node_dies_publishes_on_another_at_once(cluster: LocalCluster) -> None:
    """The publisher is connected to the node that leads the queue, and reconnects to another node sooner
    than the queue elects a new leader (a reconnect interval of 0.1 s makes that race certain)."""
    first, *others = cluster.amqp_urls(PUBLISHER_VHOST)
    settings = ServiceSettings(
        service_name="userservice",
        rabbitmq_url=first,
        rabbitmq_failover_urls=",".join(others),
        broker_reconnect_interval_s=0.1,
    )
    infra = _cluster_infra(cluster, PUBLISHER_VHOST)
    victim = cluster.nodes[0]
    broker = Broker(settings)
    await broker.connect()  # declared through the first node, which leads every queue
    management = _management_on(infra, cluster.nodes[1])
    try:
        leader = (await management.queue(USER_REGISTERED.name))["leader"]
        assert leader == victim.node, f"the queue is led by {leader}, not by the node the publisher is on"
        await broker.publish(UserRegistered(user_id=1, email="before@example.com"))

        await victim.kill()

        async def confirmed() -> bool:
            try:
                await broker.publish(UserRegistered(user_id=1, email="after@example.com"))
            except BrokerUnavailable:
                return False
            return True

        await eventually(confirmed, timeout=5, interval=0.05, message="no publish was confirmed within 5 s")
        for _ in range(20):  # and it stays so
            await broker.publish(UserRegistered(user_id=1, email="after@example.com"))
    finally:
        await broker.close()
        await management.close()
        await victim.start()
        await _wait_until_whole(cluster, infra, cluster.nodes[1])


@pytest.fixture
def cluster_faults(
    cluster_private: PrivateInfra, cluster_fleet: Fleet, http: httpx.AsyncClient, fault_report: FaultReport
) -> dict[str, Any]:
    return {"private": cluster_private, "fleet": cluster_fleet, "http": http, "fault_report": fault_report}


async def _run_cluster_fault(
    fault: str, inject: Inject, management: Management, cluster_faults: dict[str, Any]
) -> None:
    """Run the fault under load and reconcile it (through `management`, on a node that stays up); with two
    of three nodes up at every moment, no request may be refused and nothing dead-lettered."""
    ledger = Ledger()
    try:
        await run_fault(fault, inject, management=management, ledger=ledger, **cluster_faults)
        assert await dead_letters(management) == {}
    finally:
        await management.close()
    refused = [f"{a.kind} {a.status} {a.detail}" for a in ledger.attempts if a.outcome == "refused"]
    assert refused == [], f"requests refused while two of three nodes were up: {refused[:10]}"


async def test_node_leading_most_queues_killed_under_load(
    cluster: LocalCluster, cluster_faults: dict[str, Any]
) -> None:
    infra: Infra = cluster_faults["private"].infra
    fleet: Fleet = cluster_faults["fleet"]
    leaders = _management_on(infra, cluster.nodes[0])
    try:
        victim_name, led = (await _queues_by_leader(leaders)).most_common(1)[0]
    finally:
        await leaders.close()
    victim = next(node for node in cluster.nodes if node.node == victim_name)
    survivor = _others(cluster, victim)[0]
    management = _management_on(infra, survivor)

    async def kill_the_leader() -> tuple[float, str]:
        connected = sum(
            1
            for name in fleet.services
            if fleet.environment(name)["RABBITMQ_URL"].endswith(f":{victim.amqp_port}/{VHOST}")
        )
        await victim.kill()
        killed = time.monotonic()
        # Publishing goes on through the other two: no outbox keeps a row waiting while the node is down.
        await asyncio.sleep(STUCK_OUTBOX_ROW_S)
        await eventually(
            lambda: _relaying(infra), timeout=RELAY_BOUND_S, interval=0.2, message="outboxes stopped draining"
        )
        relaying_s = time.monotonic() - killed
        await asyncio.sleep(max(0.0, 2 * OUTAGE_S - relaying_s))
        down_s = time.monotonic() - killed
        await victim.start()
        await _wait_until_whole(cluster, infra, survivor)
        await all_ready(fleet, cluster_faults["http"])
        return relaying_s, (
            f"SIGKILL to the node leading {led} of the vhost's queues, which {connected} of the ten services were "
            f"connected to; they moved to the other nodes. {relaying_s:.1f} s after the kill (the time to recover; "
            f"the check cannot tell sooner than {STUCK_OUTBOX_ROW_S:g} s) no outbox held a row older than "
            f"{STUCK_OUTBOX_ROW_S:g} s: publishing went on through the other two. Back after {down_s:.0f} s; "
            "every queue had its three members again before the load ended."
        )

    fault = "Node leading most queues killed (3-node cluster)"
    await _run_cluster_fault(fault, kill_the_leader, management, cluster_faults)


async def test_rolling_restart_of_every_node_under_load(cluster: LocalCluster, cluster_faults: dict[str, Any]) -> None:
    infra: Infra = cluster_faults["private"].infra
    management = _management_on(infra, cluster.nodes[0])
    restarts: list[str] = []

    async def restart_each_node() -> tuple[float, str]:
        started = time.monotonic()
        for node in cluster.nodes:
            begun = time.monotonic()
            await node.stop()
            await node.start()
            await _wait_until_whole(cluster, infra, _others(cluster, node)[0])
            restarts.append(f"{time.monotonic() - begun:.0f} s")
        recovery_s = await all_ready(cluster_faults["fleet"], cluster_faults["http"])
        return recovery_s, (
            "The three nodes stopped cleanly (`rabbitmqctl stop`) and started one after another, each only once "
            f"every queue had its three members running again ({', '.join(restarts)} per node, "
            f"{time.monotonic() - started:.0f} s in all)."
        )

    await _run_cluster_fault("Rolling restart (3-node cluster)", restart_each_node, management, cluster_faults)
