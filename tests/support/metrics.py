"""Reading a service's Prometheus metrics, as a dashboard would."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def sample(http: httpx.AsyncClient, base_url: str, name: str, **labels: str) -> float:
    """The value of one sample from `base_url`/metrics (0 if the series does not exist yet)."""
    response = await http.get(f"{base_url}/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for candidate in family.samples:
            if candidate.name == name and all(candidate.labels.get(key) == value for key, value in labels.items()):
                return float(candidate.value)
    return 0.0
