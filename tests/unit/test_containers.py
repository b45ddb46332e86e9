"""Static checks of the Docker path: no Docker engine runs here, so what `docker compose up` would do
is checked from the files themselves, against the local runner (devtools/fleet.py) and the services'
Settings. The image's Python environment is built and run in tests/integration/test_container_image.py.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from devtools.container import (
    GATEWAY_CONFIG,
    GATEWAY_REPLICA_SLOTS,
    health_url,
    probe,
    render_gateway_config,
    run_argv,
    service_from,
)
from devtools.fleet import SERVICES, SERVICES_BY_NAME
from tests.support.containers import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    ROOT,
    build_context,
    compose_variables,
    dockerfile_env,
    dockerfile_instructions,
    environment_of,
    interpolate,
    load_compose,
    read_env_file,
)

CLUSTER_NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")  # the first runs without the `cluster` profile too
INFRASTRUCTURE = {"postgres", *CLUSTER_NODES}
MONITORING = {"gateway", "prometheus", "grafana", "cadvisor", "k6"}
# The consumers the design document scales out, with the replicas the connection budget must allow.
SCALED_REPLICAS = {"emailservice": 3, "reportservice": 3, "analyticsservice": 3}


def required_tool(name: str) -> str:
    """A system tool .ci/run installs: missing in CI is a failure, on a developer's machine a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run should have installed it")
        pytest.skip(f"{name} is not installed (apt-get install {name}); CI runs this check")
    return path


def venv_tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing from the virtual environment: make venv (requirements-dev.txt)"
    return str(path)


def settings_class(service: str) -> type[BaseSettings]:
    settings: type[BaseSettings] = importlib.import_module(f"{service}.settings").Settings
    return settings


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as compose reads it without a .env: every variable at its default."""
    return load_compose({})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --- the compose file is valid -----------------------------------------------------------------


def _compose_config(home: Path, *options: str, compose_text: str | None = None) -> dict[str, Any]:
    """The services as `docker-compose [options] config` resolves them; it must accept the file without a
    warning. Only PATH and a HOME of the test's own reach it: the caller's variables must not leak in.
    `compose_text` goes in on stdin instead of the file (paths stay relative to the repository)."""
    source = str(COMPOSE_FILE) if compose_text is None else "-"
    result = subprocess.run(
        [required_tool("docker-compose"), "-f", source, *options, "config"],
        input=compose_text,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


@pytest.mark.parametrize("env_file", ["none", ".env.example"])
def test_docker_compose_accepts_the_file(env_file: str, tmp_path: Path) -> None:
    """Debian's docker-compose 1.29.2 validates against its compose-spec schema and checks references
    (services in depends_on, volumes, profiles, `condition: service_healthy`) without an engine."""
    env_path = ENV_EXAMPLE if env_file != "none" else tmp_path / "empty.env"
    env_path.touch()
    resolved = _compose_config(tmp_path, "--env-file", str(env_path))
    # What the file means to compose is what these tests read it as.
    assert resolved["k6"]["profiles"] == ["load"]
    assert resolved["emailservice"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert resolved["emailservice"]["environment"] == environment_of(load_compose({})["services"]["emailservice"])


def test_compose_file_matches_the_current_compose_specification() -> None:
    """The compose-spec JSON schema that `docker compose` (v2) implements, vendored by check-jsonschema."""
    result = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_file_compose_mounts_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                # k6's script arrives with the load-test issue; the folder it is mounted from exists.
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


# --- the ten services: the local runner's commands, ports and settings ---------------------------


def test_compose_runs_exactly_the_fleet(services: dict[str, dict[str, Any]]) -> None:
    fleet = {name for name in services if name not in INFRASTRUCTURE | MONITORING}
    assert fleet == set(SERVICES_BY_NAME)
    for name in fleet:
        service = services[name]
        assert service["build"] == {"context": ".", "args": {"SERVICE": name}}, name
        assert service["image"] == f"event-fleet/{name}"


def test_services_run_the_image_command_which_is_the_procfile_line(services: dict[str, dict[str, Any]]) -> None:
    """Compose overrides neither command nor entrypoint; the image's CMD execs the Procfile's line."""
    for spec in SERVICES:
        service = services[spec.name]
        assert "command" not in service, spec.name
        assert "entrypoint" not in service, spec.name
        assert run_argv(spec) == ["sh", "-c", spec.command()]
        assert service_from({"SERVICE": spec.name}) == spec
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines()[1:])
    assert {name: run_argv(spec)[2] for name, spec in SERVICES_BY_NAME.items()} == procfile


def test_services_publish_no_host_port_so_replicas_cannot_clash(services: dict[str, dict[str, Any]]) -> None:
    for spec in SERVICES:
        assert "ports" not in services[spec.name], f"{spec.name}: the gateway publishes its port"
        # The container listens on the design port: compose does not move it.
        assert spec.port_variable not in environment_of(services[spec.name])


def test_gateway_publishes_every_design_port(services: dict[str, dict[str, Any]]) -> None:
    ports = sorted(spec.port for spec in SERVICES)
    assert ports == list(range(ports[0], ports[-1] + 1))
    assert f"{ports[0]}-{ports[-1]}:{ports[0]}-{ports[-1]}" in services["gateway"]["ports"]
    assert set(services["gateway"]["depends_on"]) == set(SERVICES_BY_NAME)


def test_gateway_config_is_generated_from_the_fleet() -> None:
    assert (ROOT / GATEWAY_CONFIG).read_text() == render_gateway_config(), "run `python -m devtools.container gateway`"
    config = render_gateway_config()
    for spec in SERVICES:
        frontend = f"frontend {spec.name}\n    bind :{spec.port}\n    default_backend {spec.name}\n"
        replicas = f"server-template {spec.name} {GATEWAY_REPLICA_SLOTS} {spec.name}:{spec.port}"
        assert frontend in config, spec.name
        assert f"backend {spec.name}\n    {replicas}\n" in config, spec.name


def test_haproxy_accepts_the_gateway_config() -> None:
    haproxy = required_tool("haproxy")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(ROOT / GATEWAY_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_services_wait_for_healthy_infrastructure_and_restart(services: dict[str, dict[str, Any]]) -> None:
    for spec in SERVICES:
        service = services[spec.name]
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "rabbitmq": {"condition": "service_healthy"},
        }
        assert service["restart"] == "unless-stopped"
    for name in INFRASTRUCTURE:
        assert services[name]["healthcheck"]["test"], name


def test_every_variable_compose_sets_is_a_setting_of_that_service(services: dict[str, dict[str, Any]]) -> None:
    for spec in SERVICES:
        settings = settings_class(spec.name)
        environment = environment_of(services[spec.name])
        unknown = {key for key in environment if key.lower() not in settings.model_fields}
        assert not unknown, f"{spec.name} ignores {sorted(unknown)} (not fields of its Settings)"
        required = {name for name, field in settings.model_fields.items() if field.is_required()}
        missing = required - {key.lower() for key in environment}
        assert not missing, f"{spec.name} needs {sorted(missing)}"
        # Every value is valid for the field, without anything from this process's environment.
        parsed = settings.model_validate({key.lower(): value for key, value in environment.items()})
        assert parsed.model_dump()["service_name"] == spec.name


def test_services_point_at_the_compose_infrastructure(services: dict[str, dict[str, Any]]) -> None:
    rabbitmq = environment_of(services["rabbitmq"])
    postgres = environment_of(services["postgres"])
    for spec in SERVICES:
        environment = environment_of(services[spec.name])
        assert environment["RABBITMQ_URL"] == (
            f"amqp://{rabbitmq['RABBITMQ_DEFAULT_USER']}:{rabbitmq['RABBITMQ_DEFAULT_PASS']}"
            f"@rabbitmq:5672/{rabbitmq['RABBITMQ_DEFAULT_VHOST']}"
        )
        assert environment["DATABASE_URL"] == (
            f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres['POSTGRES_DB']}"
        )


def test_compose_defaults_are_the_settings_defaults(services: dict[str, dict[str, Any]]) -> None:
    """Without a .env the stack behaves as `make run` does: same delays, same log level."""
    infrastructure = {"rabbitmq_url", "database_url"}
    for spec in SERVICES:
        settings = settings_class(spec.name)
        environment = environment_of(services[spec.name])
        tunables = {key.lower(): value for key, value in environment.items() if key.lower() not in infrastructure}
        parsed = settings.model_validate(tunables).model_dump()
        for name in tunables:
            assert parsed[name] == settings.model_fields[name].default, f"{spec.name}: {name}"


def test_env_example_holds_exactly_the_compose_defaults() -> None:
    """So compose behaves the same with a copied .env.example and with no .env at all."""
    text = COMPOSE_FILE.read_text()
    assert read_env_file() == compose_variables(text)
    assert interpolate(text, read_env_file()) == interpolate(text, {})


def test_postgres_accepts_every_pool_with_replicas(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(services["postgres"]["command"])
    max_connections = int(re.search(r"max_connections=(\d+)", command).group(1))  # type: ignore[union-attr]
    pools = [settings_class(spec.name)().model_dump() for spec in SERVICES]
    per_replica = max(pool["db_pool_size"] + pool["db_max_overflow"] for pool in pools)
    replicas = len(SERVICES) + sum(count - 1 for count in SCALED_REPLICAS.values())
    assert max_connections >= per_replica * replicas + 20  # psql, Grafana's queries, a few spare


def test_rabbitmq_has_the_management_and_prometheus_plugins(services: dict[str, dict[str, Any]]) -> None:
    rabbitmq = services["rabbitmq"]
    assert {"5672:5672", "15672:15672", "15692:15692"} <= set(rabbitmq["ports"])
    assert "./rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro" in rabbitmq["volumes"]
    plugins = (ROOT / "rabbitmq" / "enabled_plugins").read_text().strip()
    assert plugins == "[rabbitmq_management,rabbitmq_prometheus]."
    assert rabbitmq["hostname"] == "rabbitmq"  # node name stable across restarts of the data volume


# --- the `cluster` profile: three RabbitMQ nodes -------------------------------------------------------


def _rabbitmq_conf(path: str) -> dict[str, str]:
    """A rabbitmq.conf (sysctl format) as keys and values."""
    entries = {}
    for raw in (ROOT / path.removeprefix("./")).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries[key.strip()] = value.strip()
    return entries


def _mounted_conf_files(service: dict[str, Any]) -> dict[str, str]:
    """Host file -> container path of each file mounted into /etc/rabbitmq/conf.d/."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if target.startswith("/etc/rabbitmq/conf.d/"):
            mounts[source] = target
    return mounts


def test_docker_compose_accepts_the_cluster_profile(tmp_path: Path) -> None:
    resolved = _compose_config(tmp_path, "--profile", "cluster")
    assert {name: resolved[name]["hostname"] for name in CLUSTER_NODES} == {name: name for name in CLUSTER_NODES}
    for name in CLUSTER_NODES[1:]:
        assert resolved[name]["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
        assert not resolved[name].get("ports"), f"{name} would clash with rabbitmq's host ports"


def test_cluster_nodes_are_one_recipe_with_their_own_data(services: dict[str, dict[str, Any]]) -> None:
    first, *others = (services[name] for name in CLUSTER_NODES)
    assert all(services[name].get("profiles") == ["cluster"] for name in CLUSTER_NODES[1:])
    assert "profiles" not in first  # one node without the profile: `make up` as before
    for node in others:
        assert node["image"] == first["image"]
        assert environment_of(node) == environment_of(first)  # the same cookie, user and vhost
        assert node["healthcheck"] == first["healthcheck"]
    data = [
        next(v.split(":")[0] for v in services[name]["volumes"] if v.endswith(":/var/lib/rabbitmq"))
        for name in CLUSTER_NODES
    ]
    assert len(set(data)) == 3, data


def test_cluster_nodes_share_a_cookie_with_their_command_line_tools(services: dict[str, dict[str, Any]]) -> None:
    environment = environment_of(services["rabbitmq"])
    server, cli = environment["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"], environment["RABBITMQ_CTL_ERL_ARGS"]
    assert server == cli  # the health check (rabbitmq-diagnostics) reaches the node with the same cookie
    flag, cookie = server.split()
    assert flag == "-setcookie"
    assert cookie


def test_joining_nodes_name_every_node_of_the_cluster(services: dict[str, dict[str, Any]]) -> None:
    for name in CLUSTER_NODES:
        mounts = _mounted_conf_files(services[name])
        peers = [source for source, target in mounts.items() if target.endswith("cluster-peers.conf")]
        assert bool(peers) == (name != "rabbitmq"), f"{name}: only the joining nodes discover peers"
        for source in peers:
            conf = _rabbitmq_conf(source)
            assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
            listed = {value for key, value in conf.items() if key.startswith("cluster_formation.classic_config.nodes.")}
            assert listed == {f"rabbit@{services[node]['hostname']}" for node in CLUSTER_NODES}


def test_quorum_queues_grow_to_every_node_of_the_cluster(services: dict[str, dict[str, Any]]) -> None:
    """The services declare their queues once the first node is healthy, before the others joined."""
    for name in CLUSTER_NODES:
        replicas = [s for s, t in _mounted_conf_files(services[name]).items() if t.endswith("quorum-replicas.conf")]
        assert replicas, f"{name} does not grow quorum queues"
        conf = _rabbitmq_conf(replicas[0])
        assert conf["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
        assert int(conf["quorum_queue.continuous_membership_reconciliation.target_group_size"]) == len(CLUSTER_NODES)


def test_make_up_cluster_gives_every_service_the_other_nodes(services: dict[str, dict[str, Any]]) -> None:
    result = subprocess.run(["make", "-n", "up-cluster"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    command = " ".join(result.stdout.replace("\\\n", " ").split())
    assert "docker compose -f docker-compose-async.yml --profile cluster up -d --build --wait" in command
    failover = command.split("RABBITMQ_FAILOVER_URLS=", 1)[1].split()[0].split(",")
    first = environment_of(services["userservice"])["RABBITMQ_URL"]
    assert failover == [first.replace("@rabbitmq:", f"@{node}:") for node in CLUSTER_NODES[1:]]
    for spec in SERVICES:
        assert environment_of(services[spec.name])["RABBITMQ_FAILOVER_URLS"] == ""  # until make up-cluster sets it


def test_design_doc_ports_of_the_monitoring_stack(services: dict[str, dict[str, Any]]) -> None:
    assert "5433:5432" in services["postgres"]["ports"]
    assert "9091:9090" in services["prometheus"]["ports"]
    assert "3001:3000" in services["grafana"]["ports"]
    assert "8081:8080" in services["cadvisor"]["ports"]
    assert environment_of(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    assert "${GRAFANA_ADMIN_PASSWORD:-admin}" in COMPOSE_FILE.read_text()


def test_k6_runs_the_async_script_inside_the_compose_network(services: dict[str, dict[str, Any]]) -> None:
    k6 = services["k6"]
    assert k6["profiles"] == ["load"]
    assert "./k6-tests:/scripts:ro" in k6["volumes"]
    assert k6["command"][-1] == "/scripts/script-async.js"
    assert "BASE_URL=http://gateway" in k6["command"]
    assert {name for name, rule in k6["depends_on"].items() if rule["condition"] == "service_healthy"} == {
        *SERVICES_BY_NAME,
        "gateway",
    }


def test_k6_writes_its_summaries_to_the_host(services: dict[str, dict[str, Any]]) -> None:
    """`run --rm` discards the container: the summaries must go into a writable bind mount."""
    k6 = services["k6"]
    summary_prefix = environment_of(k6)["SUMMARY_PREFIX"]
    mounts = {target: source for source, target, *mode in (volume.split(":") for volume in k6["volumes"])}
    writable = {target for source, target, *mode in (volume.split(":") for volume in k6["volumes"]) if "ro" not in mode}
    (directory,) = [target for target in writable if summary_prefix.startswith(target.rstrip("/") + "/")]
    assert (ROOT / mounts[directory]).is_dir()
    # The image's user (12345) cannot write into a directory the host user owns; make load runs k6 as them.
    assert k6["user"] == "12345:12345"
    assert "${K6_UID:-12345}:${K6_GID:-12345}" in COMPOSE_FILE.read_text()
    result = subprocess.run(["make", "-n", "load"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert f"mkdir -p {mounts[directory].removeprefix('./')}" in result.stdout
    assert "K6_UID=$(id -u) K6_GID=$(id -g) docker compose" in result.stdout


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_is_one_recipe_for_every_service() -> None:
    instructions = dockerfile_instructions()
    keywords = [instruction.keyword for instruction in instructions]
    assert keywords.count("FROM") == 1
    assert instructions[0].arguments == "python:3.11-slim"
    env = dockerfile_env(instructions)
    assert env["BIND_HOST"] == "0.0.0.0"  # the Procfile's line binds ${BIND_HOST:-127.0.0.1}
    assert env["SERVICE"] == "${SERVICE}"
    assert "ARG SERVICE" in [f"{i.keyword} {i.arguments}" for i in instructions]

    (user,) = [i.arguments for i in instructions if i.keyword == "USER"]
    assert user.split(":")[0] not in {"0", "root"}
    assert keywords.index("USER") < keywords.index("CMD")

    (cmd,) = [i for i in instructions if i.keyword == "CMD"]
    assert cmd.exec_form() == ["python", "-m", "devtools.container", "run"]
    (healthcheck,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert healthcheck.exec_form() == ["python", "-m", "devtools.container", "health"]


def test_dependencies_are_installed_in_their_own_layer_before_the_code() -> None:
    instructions = [f"{i.keyword} {i.arguments}" for i in dockerfile_instructions()]
    requirements = instructions.index("COPY requirements.txt ./")
    install = instructions.index("RUN pip install -r requirements.txt")
    code = instructions.index("COPY . ./")
    assert requirements < install < code


def test_build_context_is_exactly_what_the_image_installs() -> None:
    context = build_context()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {path.split("/")[0] for path in context if "/" in path} == set(packages)
    assert {path for path in context if "/" not in path} == {"requirements.txt", "pyproject.toml"}
    assert not [path for path in context if "__pycache__" in path or path.endswith(".pyc")]
    for package in packages:
        assert f"{package}/__init__.py" in context


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout


def test_health_probe_uses_the_port_the_command_binds() -> None:
    email = SERVICES_BY_NAME["emailservice"]
    assert health_url(email, {}) == "http://127.0.0.1:8107/health"
    assert health_url(email, {"EMAILSERVICE_PORT": "9999"}) == "http://127.0.0.1:9999/health"
    assert probe("http://127.0.0.1:9/health", timeout=1.0) is False  # nothing listens on the discard port


def test_an_unknown_service_is_refused() -> None:
    for environment in ({}, {"SERVICE": ""}, {"SERVICE": "mailservice"}):
        with pytest.raises(SystemExit, match="SERVICE must name one of"):
            service_from(environment)


# --- monitoring files compose mounts ----------------------------------------------------------


def test_prometheus_scrapes_every_replica_of_every_service_rabbitmq_and_cadvisor() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for spec in SERVICES:
        (discovery,) = jobs[spec.name]["dns_sd_configs"]
        assert discovery == {"names": [spec.name], "type": "A", "port": spec.port, "refresh_interval": "10s"}
    assert jobs["rabbitmq"]["static_configs"] == [{"targets": ["rabbitmq:15692"]}]
    assert jobs["rabbitmq-per-object"]["metrics_path"] == "/metrics/per-object"
    assert jobs["rabbitmq-per-object"]["static_configs"] == [{"targets": ["rabbitmq:15692"]}]
    assert jobs["cadvisor"]["static_configs"] == [{"targets": ["cadvisor:8080"]}]


def test_grafana_provisioning_matches_the_compose_mounts(services: dict[str, dict[str, Any]]) -> None:
    grafana = ROOT / "grafana"
    (datasource,) = yaml.safe_load((grafana / "provisioning/datasources/datasource.yml").read_text())["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((grafana / "provisioning/dashboards/dashboard.yml").read_text())["providers"]
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


# --- make targets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("up", "docker compose -f docker-compose-async.yml up -d --build --wait"),
        ("down", "docker compose -f docker-compose-async.yml --profile load --profile cluster down --remove-orphans"),
        ("logs", "docker compose -f docker-compose-async.yml logs -f --tail=100"),
        ("load", "docker compose -f docker-compose-async.yml --profile load run --rm -e PROFILE=default k6"),
    ],
)
def test_make_targets_drive_the_compose_file(target: str, expected: str) -> None:
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
