"""Where each service answers: its port in the asynchronous fleet (the design document's 8101-8110) and
in the synchronous one (8001-8010, the earlier implementation's), so both fleets can run side by side.

The local runner (devtools/fleet.py), the containers and the synchronous fleet's calls between services
all take the ports from here.
"""

from __future__ import annotations

from typing import Literal

FleetMode = Literal["async", "sync"]

ASYNC_PORTS: dict[str, int] = {
    "userservice": 8101,
    "paymentservice": 8102,
    "productservice": 8103,
    "reportservice": 8104,
    "orderservice": 8105,
    "analyticsservice": 8106,
    "emailservice": 8107,
    "searchservice": 8108,
    "cacheservice": 8109,
    "inventoryservice": 8110,
}
FLEET_SERVICES: tuple[str, ...] = tuple(ASYNC_PORTS)
# The synchronous fleet's port of each service: its asynchronous port minus this.
SYNC_PORT_OFFSET = 100


def default_port(service: str, mode: FleetMode) -> int:
    try:
        port = ASYNC_PORTS[service]
    except KeyError:
        raise LookupError(f"{service!r} is not a service of the fleet") from None
    return port - SYNC_PORT_OFFSET if mode == "sync" else port


def port_variable(service: str) -> str:
    """The environment variable that moves a service off its default port (tests and containers do)."""
    return f"{service.upper()}_PORT"
