"""A 3-node RabbitMQ cluster on this machine (the one `make cluster` starts): the fleet's quorum queues
have a replica on every node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.broker import Broker
from common.settings import ServiceSettings
from common.topology import QUEUES
from devtools.rabbitmq_nodes import LocalCluster, local_cluster

pytestmark = pytest.mark.faults

VHOST = "cluster"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("rabbitmq-cluster")
    async with local_cluster(root) as running:
        await running.add_vhost(VHOST)
        yield running


async def _queues(management_url: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(auth=("guest", "guest"), timeout=10.0) as client:
        response = await client.get(f"{management_url}/api/queues/{VHOST}")
        response.raise_for_status()
    return {queue["name"]: queue for queue in response.json()}


async def test_every_queue_has_a_replica_on_each_node(cluster: LocalCluster) -> None:
    urls = cluster.amqp_urls(VHOST)
    broker = Broker(ServiceSettings(service_name="clustertest", rabbitmq_url=urls[0]))
    await broker.connect()  # declares the whole message map
    await broker.close()
    node_names = {node.node for node in cluster.nodes}
    queues = await _queues(cluster.nodes[0].management_url)
    for queue in QUEUES:
        assert set(queues[queue.name]["members"]) == node_names, queue.name
        assert set(queues[queue.dead_letter_queue]["members"]) == node_names, queue.dead_letter_queue
