"""Static checks of the synchronous fleet's Docker path (docker-compose-sync.yml), as
tests/unit/test_containers.py checks the asynchronous one: no Docker engine runs here, so what
`docker compose up` would do is checked from the files themselves, against the fleet description
(devtools/fleet.py), the services' Settings and the asynchronous compose file it mirrors.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import dashboards, monitoring
from devtools.container import GATEWAY_CONFIGS, health_url, render_gateway_config, run_argv, service_from
from devtools.fleet import SERVICES_BY_NAME, SYNC_SERVICES, SYNC_SERVICES_BY_NAME
from tests.support.containers import (
    ENV_EXAMPLE,
    ROOT,
    compose_variables,
    dockerfile_env,
    dockerfile_instructions,
    environment_of,
    interpolate,
    load_compose,
    read_env_file,
)
from tests.unit.test_containers import _compose_config, required_tool, settings_class, venv_tool

SYNC_COMPOSE_FILE = ROOT / "docker-compose-sync.yml"
INFRASTRUCTURE = {"postgres"}
MONITORING = {"gateway", "prometheus", "grafana", "cadvisor", "k6"}
URL_TEMPLATE = "http://{service}:{port}"
# Read by the image's launcher (devtools/container.py, the Procfile's line), not by the Settings.
LAUNCHER_VARIABLES = {spec.name: {spec.port_variable} for spec in SYNC_SERVICES}
# Debian's docker-compose 1.29.2 predates the top-level `name` (the project name, Compose v2).
_PROJECT_NAME = re.compile(r"^name: .*\n", re.MULTILINE)


def load_sync_compose(environment: dict[str, str] | None = None) -> dict[str, Any]:
    """The file as compose reads it: variables interpolated (merge keys resolved by YAML)."""
    loaded = yaml.safe_load(interpolate(SYNC_COMPOSE_FILE.read_text(), environment or {}))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_sync_compose({})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def async_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_compose({})["services"]
    return services


def _without(service: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in service.items() if key not in keys}


def _host_ports(service: dict[str, Any]) -> set[int]:
    """Every host port a service publishes ("8001-8010:8001-8010" is ten)."""
    ports: set[int] = set()
    for mapping in service.get("ports", []):
        host = str(mapping).rsplit(":", 1)[0].rsplit(":", 1)[-1]
        first, _, last = host.partition("-")
        ports |= set(range(int(first), int(last or first) + 1))
    return ports


# --- the compose file is valid -----------------------------------------------------------------


def _sync_compose_config(home: Path, *options: str) -> dict[str, Any]:
    """`docker-compose config` of the file without its project name, the one key docker-compose 1.29.2 does
    not know yet (the current schema, which has it, checks the whole file in the next test)."""
    without_name, removed = _PROJECT_NAME.subn("", SYNC_COMPOSE_FILE.read_text())
    assert removed == 1, "the file names its compose project once, at the top level"
    return _compose_config(home, *options, compose_text=without_name)


@pytest.mark.parametrize("env_file", ["none", ".env.example"])
def test_docker_compose_accepts_the_file(env_file: str, tmp_path: Path) -> None:
    env_path = ENV_EXAMPLE if env_file != "none" else tmp_path / "empty.env"
    env_path.touch()
    resolved = _sync_compose_config(tmp_path, "--env-file", str(env_path))
    assert set(resolved) == {*SYNC_SERVICES_BY_NAME, *INFRASTRUCTURE, *MONITORING}
    assert resolved["k6"]["profiles"] == ["load"]
    assert resolved["emailservice"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # What the file means to compose is what these tests read it as (the merge keys included).
    for spec in SYNC_SERVICES:
        assert resolved[spec.name]["environment"] == environment_of(load_sync_compose({})["services"][spec.name])


def test_compose_file_matches_the_current_compose_specification() -> None:
    result = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(SYNC_COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_is_a_compose_project_of_its_own(compose: dict[str, Any]) -> None:
    """Under the asynchronous stack's project name, `up` would replace that stack's containers and reuse
    its data volumes; the asynchronous file names no project, so compose names it after the directory."""
    name = compose["name"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name
    assert name not in {load_compose({}).get("name"), ROOT.name}
    assert not [volume for volume in (compose.get("volumes") or {}).values() if volume and "name" in volume]


def test_every_file_compose_mounts_exists(services: dict[str, dict[str, Any]]) -> None:
    mounted = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                mounted += 1
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    assert mounted >= 5  # the gateway's and Prometheus' configs, Grafana's two folders, k6's scripts


# --- the ten services ---------------------------------------------------------------------------


def test_the_stack_runs_exactly_the_ten_services_and_the_infrastructure(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*SYNC_SERVICES_BY_NAME, *INFRASTRUCTURE, *MONITORING}


def test_services_are_the_asynchronous_stacks_image_recipe(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    """Same image, build arguments, restart policy, grace period, CPU weight and logging: only the
    environment and what the services wait for differ. Nothing overrides the image's command."""
    for spec in SYNC_SERVICES:
        service = services[spec.name]
        assert _without(service, "environment", "depends_on") == _without(
            async_services[spec.name], "environment", "depends_on"
        ), spec.name
        assert "command" not in service, spec.name
        assert "entrypoint" not in service, spec.name


def test_every_service_joins_the_synchronous_fleet(services: dict[str, dict[str, Any]]) -> None:
    """FLEET_MODE=sync, its synchronous port, and its calls go to the other services' DNS names."""
    for spec in SYNC_SERVICES:
        environment = environment_of(services[spec.name])
        assert environment["FLEET_MODE"] == "sync", spec.name
        assert environment[spec.port_variable] == str(spec.port), spec.name
        assert environment["SERVICE_URL_TEMPLATE"] == URL_TEMPLATE, spec.name
        settings = settings_class(spec.name).model_validate(
            {key.lower(): value for key, value in environment.items() if key not in LAUNCHER_VARIABLES[spec.name]}
        )
        assert settings.fleet_mode == "sync"
        for other in SYNC_SERVICES:
            assert settings.service_url(other.name) == f"http://{other.name}:{other.port}", spec.name


def test_the_environment_is_the_asynchronous_one_without_the_broker(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    for spec in SYNC_SERVICES:
        environment = environment_of(services[spec.name])
        expected = {
            key: value for key, value in environment_of(async_services[spec.name]).items() if "RABBITMQ" not in key
        }
        expected |= {"FLEET_MODE": "sync", "SERVICE_URL_TEMPLATE": URL_TEMPLATE, spec.port_variable: str(spec.port)}
        assert environment == expected, spec.name


def test_containers_listen_on_the_synchronous_ports(tmp_path: Path, services: dict[str, dict[str, Any]]) -> None:
    """What the image's launcher runs with each service's environment (a stand-in uvicorn prints its
    arguments): the Procfile.sync line, bound to the synchronous port the health check probes too."""
    fake = tmp_path / "uvicorn"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile.sync").read_text().splitlines()[1:])
    image_env = dockerfile_env(dockerfile_instructions())
    for spec in SYNC_SERVICES:
        environment = {
            "SERVICE": spec.name,
            "BIND_HOST": image_env["BIND_HOST"],
            **environment_of(services[spec.name]),
        }
        launched = service_from(environment)
        assert launched == spec
        argv = run_argv(launched)
        assert argv[2] == procfile[spec.name]
        result = subprocess.run(
            argv, env={**environment, "PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        arguments = result.stdout.split()
        assert arguments[arguments.index("--port") + 1] == str(spec.port), spec.name
        assert arguments[arguments.index("--host") + 1] == "0.0.0.0"
        assert health_url(launched, environment) == f"http://127.0.0.1:{spec.port}/health"


def test_the_launcher_follows_the_fleet_mode() -> None:
    """FLEET_MODE=sync alone puts a container on the synchronous fleet's default port."""
    email = {"SERVICE": "emailservice"}
    assert service_from({**email, "FLEET_MODE": "sync"}) == SYNC_SERVICES_BY_NAME["emailservice"]
    assert health_url(service_from({**email, "FLEET_MODE": "sync"}), {}) == "http://127.0.0.1:8007/health"
    for environment in (email, {**email, "FLEET_MODE": "async"}, {**email, "FLEET_MODE": ""}):
        assert service_from(environment) == SERVICES_BY_NAME["emailservice"]
    with pytest.raises(SystemExit, match="SERVICE must name one of"):
        service_from({"SERVICE": "mailservice", "FLEET_MODE": "sync"})


def test_no_rabbitmq_anywhere(compose: dict[str, Any]) -> None:
    """Not a broker, a broker variable, a broker URL or a broker file: a synchronous service needs none."""
    resolved = json.dumps(compose).lower()
    assert "rabbitmq" not in resolved
    assert "amqp" not in resolved
    assert not [name for name in compose_variables(SYNC_COMPOSE_FILE.read_text()) if "RABBITMQ" in name]


def test_every_variable_compose_sets_is_a_setting_of_that_service(services: dict[str, dict[str, Any]]) -> None:
    for spec in SYNC_SERVICES:
        settings = settings_class(spec.name)
        environment = environment_of(services[spec.name])
        for variable in LAUNCHER_VARIABLES[spec.name]:
            assert variable in environment, spec.name
            assert variable.lower() not in settings.model_fields, f"{variable} is a setting now: drop the exemption"
        configured = {key: value for key, value in environment.items() if key not in LAUNCHER_VARIABLES[spec.name]}
        unknown = {key for key in configured if key.lower() not in settings.model_fields}
        assert not unknown, f"{spec.name} ignores {sorted(unknown)} (not fields of its Settings)"
        required = {name for name, field in settings.model_fields.items() if field.is_required()}
        missing = required - {key.lower() for key in configured}
        assert not missing, f"{spec.name} needs {sorted(missing)}"
        # Every value is valid for the field, without anything from this process's environment.
        parsed = settings.model_validate({key.lower(): value for key, value in configured.items()})
        assert parsed.model_dump()["service_name"] == spec.name


def test_services_point_at_the_compose_database(services: dict[str, dict[str, Any]]) -> None:
    postgres = environment_of(services["postgres"])
    for spec in SYNC_SERVICES:
        assert environment_of(services[spec.name])["DATABASE_URL"] == (
            f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres['POSTGRES_DB']}"
        )


def test_compose_defaults_are_the_settings_defaults(services: dict[str, dict[str, Any]]) -> None:
    """Without a .env the stack behaves as `make run-sync` does: same delays, same log level."""
    chosen = {"database_url", "fleet_mode", "service_url_template"}
    for spec in SYNC_SERVICES:
        settings = settings_class(spec.name)
        environment = environment_of(services[spec.name])
        tunables = {
            key.lower(): value
            for key, value in environment.items()
            if key.lower() not in chosen and key not in LAUNCHER_VARIABLES[spec.name]
        }
        assert tunables, spec.name
        parsed = settings.model_validate(tunables).model_dump()
        for name in tunables:
            assert parsed[name] == settings.model_fields[name].default, f"{spec.name}: {name}"


def test_env_example_holds_the_compose_defaults() -> None:
    """The .env the asynchronous stack documents serves this one too: every variable this file reads is
    in .env.example with the same default, so a copied .env.example changes nothing."""
    text = SYNC_COMPOSE_FILE.read_text()
    variables = compose_variables(text)
    assert variables
    assert variables.items() <= read_env_file().items()
    assert interpolate(text, read_env_file()) == interpolate(text, {})


def test_services_wait_for_a_healthy_database_and_restart(services: dict[str, dict[str, Any]]) -> None:
    for spec in SYNC_SERVICES:
        service = services[spec.name]
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}, spec.name
        assert service["restart"] == "unless-stopped"
    assert services["postgres"]["healthcheck"]["test"]


def test_services_publish_no_host_port_so_replicas_cannot_clash(services: dict[str, dict[str, Any]]) -> None:
    for spec in SYNC_SERVICES:
        assert "ports" not in services[spec.name], f"{spec.name}: the gateway publishes its port"


# --- the gateway ---------------------------------------------------------------------------------


def test_gateway_publishes_every_sync_port(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    ports = sorted(spec.port for spec in SYNC_SERVICES)
    assert ports == list(range(8001, 8011))
    gateway = services["gateway"]
    assert f"{ports[0]}-{ports[-1]}:{ports[0]}-{ports[-1]}" in gateway["ports"]
    assert set(ports) <= _host_ports(gateway)
    assert set(gateway["depends_on"]) == set(SYNC_SERVICES_BY_NAME)
    assert gateway["volumes"] == [f"./{GATEWAY_CONFIGS['sync']}:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    # The asynchronous stack's gateway, but for its ports and its configuration.
    assert _without(gateway, "ports", "volumes", "depends_on") == _without(
        async_services["gateway"], "ports", "volumes", "depends_on"
    )


def test_gateway_config_is_generated_from_the_fleet() -> None:
    text = (ROOT / GATEWAY_CONFIGS["sync"]).read_text()
    assert text == render_gateway_config("sync"), "run `python -m devtools.container gateway`"
    assert text != render_gateway_config("async")
    for spec in SYNC_SERVICES:
        frontend = f"frontend {spec.name}\n    bind :{spec.port}\n    default_backend {spec.name}\n"
        assert frontend in text, spec.name
        assert f"backend {spec.name}\n    server-template {spec.name} 10 {spec.name}:{spec.port}\n" in text
    binds = set(re.findall(r"^\s*bind :(\d+)$", text, re.MULTILINE))
    assert binds == {str(spec.port) for spec in SYNC_SERVICES} | {"8404"}


def test_gateway_waits_longer_than_the_chain_of_calls(services: dict[str, dict[str, Any]]) -> None:
    """A request waits for every call it causes, for up to CALL_TIMEOUT_S; the gateway must not cut it
    first, or the client gets HAProxy's 504 instead of the service's answer."""
    text = (ROOT / GATEWAY_CONFIGS["sync"]).read_text()
    timeouts = {side: float(value) for side, value in re.findall(r"timeout (client|server) (\d+)s", text)}
    assert set(timeouts) == {"client", "server"}
    for spec in SYNC_SERVICES:
        environment = environment_of(services[spec.name])
        settings = settings_class(spec.name).model_validate(
            {key.lower(): value for key, value in environment.items() if key not in LAUNCHER_VARIABLES[spec.name]}
        )
        assert min(timeouts.values()) >= settings.call_timeout_s + 5, spec.name


def test_haproxy_accepts_the_gateway_config() -> None:
    haproxy = required_tool("haproxy")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(ROOT / GATEWAY_CONFIGS["sync"])], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr, result.stdout + result.stderr


# --- infrastructure and monitoring -----------------------------------------------------------------


def test_ports_of_the_monitoring_stack(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["ports"] == ["5432:5432"]
    assert services["prometheus"]["ports"] == ["9090:9090"]
    assert services["grafana"]["ports"] == ["3000:3000"]
    assert services["cadvisor"]["ports"] == ["8080:8080"]
    assert environment_of(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    assert "${GRAFANA_ADMIN_PASSWORD:-admin}" in SYNC_COMPOSE_FILE.read_text()


def test_both_stacks_can_run_side_by_side(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    published = {name: _host_ports(service) for name, service in services.items()}
    assert all(published[name] for name in {*INFRASTRUCTURE, *MONITORING} - {"k6"})
    ours = set().union(*published.values())
    theirs = set().union(*(_host_ports(service) for service in async_services.values()))
    assert not ours & theirs, sorted(ours & theirs)


def test_infrastructure_is_the_asynchronous_stacks(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    """PostgreSQL (its connection budget included), Grafana and cAdvisor as the asynchronous stack runs
    them, on their own host ports; Prometheus with its own scrape configuration."""
    for name in ("postgres", "grafana", "cadvisor"):
        assert _without(services[name], "ports") == _without(async_services[name], "ports"), name
    prometheus, theirs = services["prometheus"], async_services["prometheus"]
    assert _without(prometheus, "ports", "volumes") == _without(theirs, "ports", "volumes")
    assert prometheus["volumes"] == [
        "./prometheus/prometheus-sync.yml:/etc/prometheus/prometheus.yml:ro",
        "prometheus-data:/prometheus",
    ]


def test_prometheus_config_is_generated() -> None:
    assert monitoring.SYNC_COMPOSE_CONFIG == ROOT / "prometheus" / "prometheus-sync.yml"
    text = monitoring.SYNC_COMPOSE_CONFIG.read_text()
    assert text == monitoring.render("compose-sync"), "stale: run `make monitoring`"
    assert text != monitoring.render("compose")


def test_prometheus_scrapes_every_replica_of_every_sync_service_and_cadvisor() -> None:
    config = yaml.safe_load(monitoring.SYNC_COMPOSE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {*SYNC_SERVICES_BY_NAME, "cadvisor", "prometheus"}
    for spec in SYNC_SERVICES:
        (discovery,) = jobs[spec.name]["dns_sd_configs"]
        assert discovery == {"names": [spec.name], "type": "A", "port": spec.port, "refresh_interval": "10s"}
    assert jobs["cadvisor"]["static_configs"] == [{"targets": ["cadvisor:8080"]}]


def test_prometheus_jobs_are_the_asynchronous_stacks_without_the_broker() -> None:
    """The same job names, paths and intervals, so the same dashboards work on both stacks."""
    ours = yaml.safe_load(monitoring.SYNC_COMPOSE_CONFIG.read_text())
    theirs = yaml.safe_load(monitoring.COMPOSE_CONFIG.read_text())
    assert ours["global"] == theirs["global"]
    without_broker = [job for job in theirs["scrape_configs"] if not job["job_name"].startswith("rabbitmq")]
    assert [job["job_name"] for job in ours["scrape_configs"]] == [job["job_name"] for job in without_broker]
    for job, their_job in zip(ours["scrape_configs"], without_broker, strict=True):
        assert job.get("metrics_path") == their_job.get("metrics_path"), job["job_name"]


def test_promtool_accepts_the_scrape_config() -> None:
    promtool = required_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(monitoring.SYNC_COMPOSE_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# PromQL label matchers: name, operator, value.
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_HTTP_LABELS = {"job", "instance", "handler", "method", "status", "le"}


def _queries() -> list[str]:
    return [
        target["expr"]
        for path in sorted(dashboards.DASHBOARD_DIR.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    ]


def test_http_and_process_panels_select_only_what_the_sync_fleet_has() -> None:
    """The HTTP panels group and filter on labels every service's HTTP metrics carry, in either fleet,
    and their job selectors find the synchronous stack's jobs (the messaging panels just stay empty)."""
    jobs = {job["job_name"] for job in yaml.safe_load(monitoring.SYNC_COMPOSE_CONFIG.read_text())["scrape_configs"]}
    services = set(SYNC_SERVICES_BY_NAME)
    fleet_queries = [
        query
        for query in _queries()
        if re.search(r"\b(http_request\w*|process_\w+|up)\{", query) and "rabbitmq" not in query
    ]
    assert len(fleet_queries) >= 10
    for query in fleet_queries:
        labels = set(re.findall(r"\bby \(([^)]*)\)", query))
        grouped = {label.strip() for group in labels for label in group.split(",")}
        assert grouped <= _HTTP_LABELS, query
        for name, operator, value in _MATCHER.findall(query):
            assert name in _HTTP_LABELS, query
            if name == "job" and operator in ("=", "=~"):
                selected = {job for job in jobs if re.fullmatch(value, job)}
                assert selected == services, query


def test_grafana_provisioning_is_mounted_as_in_the_asynchronous_stack(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    mounts = [volume for volume in services["grafana"]["volumes"] if volume.startswith("./")]
    assert mounts == [volume for volume in async_services["grafana"]["volumes"] if volume.startswith("./")]
    (datasource,) = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasource.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"  # this stack's Prometheus has the same service name
    assert "prometheus" in services


# --- k6 -------------------------------------------------------------------------------------------


def test_k6_runs_the_async_script_in_sync_mode_inside_the_compose_network(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    k6 = services["k6"]
    assert k6["profiles"] == ["load"]
    command = k6["command"]
    assert command[0] == "run"
    assert command[-1] == "/scripts/script-async.js"
    flags, values = command[1:-1:2], command[2:-1:2]
    assert set(flags) <= {"--env", "-e"}
    assert sorted(values) == ["BASE_URL=http://gateway", "MODE=sync"]
    assert {name for name, rule in k6["depends_on"].items() if rule["condition"] == "service_healthy"} == {
        *SYNC_SERVICES_BY_NAME,
        "gateway",
    }
    assert _without(k6, "command", "environment") == _without(async_services["k6"], "command", "environment")


def test_k6_summaries_do_not_overwrite_the_asynchronous_ones(
    services: dict[str, dict[str, Any]], async_services: dict[str, dict[str, Any]]
) -> None:
    ours = environment_of(services["k6"])["SUMMARY_PREFIX"]
    theirs = environment_of(async_services["k6"])["SUMMARY_PREFIX"]
    assert ours != theirs
    assert Path(ours).parent == Path(theirs).parent  # the writable mount the asynchronous one uses
    assert "${K6_UID:-12345}:${K6_GID:-12345}" in SYNC_COMPOSE_FILE.read_text()
