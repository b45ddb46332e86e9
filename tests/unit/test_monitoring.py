"""The monitoring files are generated, current, valid, and structurally sound."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.consumer import retry_delays_s
from common.settings import ServiceSettings
from common.topology import QUEUES, retry_tier
from devtools import dashboards, monitoring
from devtools.dashboards import MAIN_QUEUES
from devtools.fleet import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "datasource.yml"


def test_scrape_configs_are_current() -> None:
    assert monitoring.COMPOSE_CONFIG.read_text() == monitoring.render("compose"), "stale: run `make monitoring`"
    assert monitoring.LOCAL_CONFIG.read_text() == monitoring.render("local"), "stale: run `make monitoring`"


@pytest.mark.parametrize("config", [monitoring.COMPOSE_CONFIG, monitoring.LOCAL_CONFIG], ids=["compose", "local"])
def test_promtool_accepts_the_scrape_config(config: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run installs it)")
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_and_local_configs_have_the_same_jobs() -> None:
    compose = [job["job_name"] for job in yaml.safe_load(monitoring.COMPOSE_CONFIG.read_text())["scrape_configs"]]
    local = [job["job_name"] for job in yaml.safe_load(monitoring.LOCAL_CONFIG.read_text())["scrape_configs"]]
    assert [job for job in compose if job != "cadvisor"] == local
    assert {service.name for service in SERVICES} <= set(local)
    assert {"rabbitmq", "rabbitmq-per-object"} <= set(local)


def test_dashboards_are_current() -> None:
    rendered = dashboards.render_all()
    assert sorted(rendered) == sorted(dashboards.DASHBOARD_DIR.glob("*.json")), "stale: run `make monitoring`"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run `make monitoring`"


def _dashboards() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(dashboards.DASHBOARD_DIR.glob("*.json"))]


def test_dashboards_are_structurally_sound() -> None:
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    loaded = _dashboards()
    assert len({dashboard["uid"] for dashboard in loaded}) == len(loaded) == 3
    for dashboard in loaded:
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: duplicate panel ids"
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{dashboard['uid']} / {panel['title']} overflows the grid"
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
            assert panel["targets"], f"{dashboard['uid']} / {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["expr"].strip(), f"{panel['title']}: empty query"
                assert target["datasource"]["uid"] == datasource_uid


def test_panels_do_not_overlap() -> None:
    for dashboard in _dashboards():
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            area = {
                (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & area, f"{dashboard['uid']} / {panel['title']} overlaps another panel"
            cells |= area


def test_the_main_queue_filter_leaves_out_every_retry_and_dead_letter_queue() -> None:
    # PromQL's =~ and !~ match the whole label value.
    companions = re.fullmatch(r'queue!~"(.*)"', MAIN_QUEUES)
    assert companions is not None
    pattern = re.compile(companions.group(1))
    delays = retry_delays_s(ServiceSettings())
    for queue in QUEUES:
        # A dead-letter queue with a consumer (report jobs') is still shown with the dead letters.
        assert bool(pattern.fullmatch(queue.name)) == queue.name.endswith(".dlq"), queue.name
        assert pattern.fullmatch(queue.dead_letter_queue)
        for delay in delays:
            assert pattern.fullmatch(retry_tier(delay)), retry_tier(delay)
