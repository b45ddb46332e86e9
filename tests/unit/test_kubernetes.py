"""The Kubernetes manifests (deploy/kubernetes/), checked offline: no cluster runs here.

- the committed files are what devtools/kubernetes.py writes (`make kubernetes`);
- core objects validate against the Kubernetes API schemas (kubernetes-validate, strict: unknown
  fields are errors, as `kubectl apply` reports them), custom resources against the openAPIV3Schema
  of the operators' CRDs vendored in deploy/kubernetes/crds/ (closed the same way, and their CEL rules
  checked by hand);
- kustomize (`kubectl kustomize`) builds the base and the local overlay into exactly the objects the
  generator meant, and a merge done here from the patch files agrees;
- manifests, compose file and Procfile agree on services, ports, images and settings; the scaling
  follows the capacity model (docs/capacity.md) and the message map.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common import topology
from devtools import kubernetes as k8s
from devtools.container import run_argv
from devtools.fleet import SERVICES, SERVICES_BY_NAME
from tests.support.containers import environment_of, load_compose

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "kubernetes" / "crds"
CRD_FILES = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_rabbitmqclusters.yaml",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_clusters.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
}
# The oldest Kubernetes the three operators' releases support, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.utils.latest_version())
KEDA_SCALED = {"emailservice", "paymentservice", "reportservice", "analyticsservice"}
SAMPLE_SECRET_VALUES = {
    # The shapes the operators write (cluster-operator: amqp://user:pass@host:port/; CNPG: postgresql://...).
    "RABBITMQ_URL": f"amqp://default_user_x:secret@{k8s.RABBITMQ_SERVICE}.{k8s.NAMESPACE}.svc:5672/",
    "DATABASE_URL": f"postgresql://fleet:secret@{k8s.POSTGRES_PRIMARY_SERVICE}.{k8s.NAMESPACE}:5432/fleet",
}


def required_tool(name: str) -> str:
    """A tool of this kind of machine: missing in CI is a failure, on a developer's machine a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def base_documents() -> list[dict[str, Any]]:
    return [obj for objects in k8s.base_objects(k8s.BASE).values() for obj in objects]


def local_documents() -> list[dict[str, Any]]:
    return [obj for objects in k8s.base_objects(k8s.LOCAL).values() for obj in objects]


VARIANT_DOCUMENTS: dict[str, Callable[[], list[dict[str, Any]]]] = {"base": base_documents, "local": local_documents}


def with_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    """What kustomize's `namespace:` does to the objects here (every one but the Namespace)."""
    result = copy.deepcopy(obj)
    if result["kind"] != "Namespace":
        result["metadata"]["namespace"] = k8s.NAMESPACE
    return result


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in documents if obj["kind"] == kind}


def normalised(value: Any) -> Any:
    """Lists of named mappings in name order: strategic merge puts patched entries first."""
    if isinstance(value, dict):
        return {name: normalised(item) for name, item in value.items()}
    if isinstance(value, list):
        items = [normalised(item) for item in value]
        if items and all(isinstance(item, dict) and "name" in item for item in items):
            return sorted(items, key=lambda item: item["name"])
        return items
    return value


# --- the files are the generator's -----------------------------------------------------------------


def test_committed_files_are_the_generators_output() -> None:
    for path, text in k8s.render_files().items():
        assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make kubernetes`"
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make kubernetes`"


def test_no_file_in_base_or_overlays_that_the_generator_does_not_write() -> None:
    generated = set(k8s.render_files())
    for directory in (k8s.BASE_DIR, k8s.LOCAL_DIR.parent, k8s.PROMETHEUS_CONFIG.parent):
        for path in directory.rglob("*"):
            if path.is_file():
                assert path in generated, f"{path.relative_to(ROOT)} is not generated by devtools/kubernetes.py"


def test_make_kubernetes_runs_the_generator() -> None:
    result = subprocess.run(["make", "-n", "kubernetes"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "python -m devtools.kubernetes" in result.stdout


# --- kustomize -------------------------------------------------------------------------------------------


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def test_kustomizations_reference_files_that_exist_and_nothing_is_left_out() -> None:
    base = kustomization(k8s.BASE_DIR)
    assert base["namespace"] == k8s.NAMESPACE
    for resource in base["resources"]:
        assert (k8s.BASE_DIR / resource).is_file(), resource
    assert {path.name for path in k8s.BASE_DIR.glob("*.yaml")} == {*base["resources"], "kustomization.yaml"}

    local = kustomization(k8s.LOCAL_DIR)
    (resource,) = local["resources"]
    assert (k8s.LOCAL_DIR / resource).resolve() == k8s.BASE_DIR
    patches = [patch["path"] for patch in local["patches"]]
    for patch in patches:
        assert (k8s.LOCAL_DIR / patch).is_file(), patch
    assert sorted(patches) == sorted(f"patches/{path.name}" for path in (k8s.LOCAL_DIR / "patches").glob("*.yaml"))


def merge(base: Any, patch: Any, *, by_name: bool) -> Any:
    """The merges kustomize applies: strategic merge for built-in kinds (named list entries merge by
    name), JSON merge patch for custom resources (lists replaced)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        result = dict(base)
        for name, value in patch.items():
            result[name] = merge(base[name], value, by_name=by_name) if name in base else value
        return result
    if (
        by_name
        and isinstance(base, list)
        and isinstance(patch, list)
        and patch
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        merged = {item["name"]: item for item in base}
        for item in patch:
            merged[item["name"]] = merge(merged[item["name"]], item, by_name=True) if item["name"] in merged else item
        return list(merged.values())
    return patch


def merged_overlay() -> list[dict[str, Any]]:
    """The local overlay built here, from the files on disk, without kustomize."""
    base = kustomization(k8s.BASE_DIR)
    objects = {key(obj): obj for resource in base["resources"] for obj in load_documents(k8s.BASE_DIR / resource)}
    for patch_file in kustomization(k8s.LOCAL_DIR)["patches"]:
        for patch in load_documents(k8s.LOCAL_DIR / patch_file["path"]):
            target = key(patch)
            assert target in objects, f"{patch_file['path']} patches {target}, which the base does not have"
            built_in = "/" not in patch["apiVersion"] or patch["apiVersion"].split("/")[0] in {"apps", "autoscaling"}
            objects[target] = merge(objects[target], patch, by_name=built_in)
    return list(objects.values())


def test_the_overlay_merged_here_is_the_local_variant() -> None:
    merged = {key(obj): normalised(obj) for obj in merged_overlay()}
    assert merged == {key(obj): normalised(obj) for obj in local_documents()}


@pytest.mark.parametrize("variant", ["base", "local"])
def test_kustomize_builds_exactly_the_generators_objects(variant: str) -> None:
    kubectl = required_tool("kubectl")
    directory = k8s.BASE_DIR if variant == "base" else k8s.LOCAL_DIR
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr
    built = {key(obj): normalised(obj) for obj in yaml.safe_load_all(result.stdout) if obj}
    expected = {key(obj): normalised(with_namespace(obj)) for obj in VARIANT_DOCUMENTS[variant]()}
    assert built == expected


# --- schemas ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", ["base", "local"])
def test_core_objects_validate_against_the_kubernetes_api(variant: str, version: str) -> None:
    core = [obj for obj in VARIANT_DOCUMENTS[variant]() if (obj["apiVersion"], obj["kind"]) not in CRD_FILES]
    assert {obj["kind"] for obj in core} == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    }
    for obj in core:
        kubernetes_validate.validate(with_namespace(obj), version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(next(obj for obj in base_documents() if obj["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def crd(api_version: str, kind: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CRD_DIR / CRD_FILES[(api_version, kind)]).read_text())
    return document


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The served version's openAPIV3Schema, closed: an object schema that lists its properties and
    neither allows others nor preserves unknown fields refuses any other field, as the API server's
    strict field validation does (it would otherwise prune them silently)."""
    definition = crd(api_version, kind)
    group, version = api_version.split("/")
    assert definition["spec"]["group"] == group
    assert definition["spec"]["names"]["kind"] == kind
    (served,) = [v for v in definition["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    # metadata is the API server's ObjectMeta; the CRD leaves it open. What these manifests use of it:
    schema["properties"]["metadata"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    return schema


def custom_resources(variant: str) -> list[dict[str, Any]]:
    return [obj for obj in VARIANT_DOCUMENTS[variant]() if (obj["apiVersion"], obj["kind"]) in CRD_FILES]


@pytest.mark.parametrize("variant", ["base", "local"])
def test_custom_resources_validate_against_the_operators_crds(variant: str) -> None:
    resources = custom_resources(variant)
    assert {(obj["apiVersion"], obj["kind"]) for obj in resources} == set(CRD_FILES)
    for obj in resources:
        schema = crd_schema(obj["apiVersion"], obj["kind"])
        errors = sorted(
            jsonschema.Draft4Validator(schema).iter_errors(with_namespace(obj)), key=lambda error: list(error.path)
        )
        assert not errors, f"{key(obj)}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_closed_crd_schemas_catch_a_misspelt_field() -> None:
    scaled = next(obj for obj in base_documents() if obj["kind"] == "ScaledObject")
    broken = copy.deepcopy(scaled)
    broken["spec"]["maxReplicas"] = 3  # the HPA's name for it, not KEDA's
    schema = crd_schema(scaled["apiVersion"], scaled["kind"])
    assert not jsonschema.Draft4Validator(schema).is_valid(broken)
    broken = copy.deepcopy(scaled)
    broken["spec"]["minReplicaCount"] = "2"
    assert not jsonschema.Draft4Validator(schema).is_valid(broken)


def cel_rules_reached(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, rule, the value it applies to) for every x-kubernetes-validations rule on a schema node the
    object reaches: jsonschema does not evaluate CEL, so each must be checked by hand."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule["rule"], value
    if isinstance(value, dict):
        for name, item in value.items():
            if name in schema.get("properties", {}):
                yield from cel_rules_reached(schema["properties"][name], item, f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            yield from cel_rules_reached(schema["items"], item, f"{path}[]")


# The CEL rules of the vendored CRDs these objects reach, each as the same condition in Python.
CEL_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)": (
        lambda spec: "minReplicaCount" not in spec or spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)
    ),
    "!(has(self.imageCatalogRef) && has(self.imageName))": (
        lambda spec: not ("imageCatalogRef" in spec and "imageName" in spec)
    ),
    "!has(self.builtinLocale) || self.localeProvider == 'builtin'": (
        lambda initdb: "builtinLocale" not in initdb or initdb.get("localeProvider") == "builtin"
    ),
    "!has(self.icuLocale) || self.localeProvider == 'icu'": (
        lambda initdb: "icuLocale" not in initdb or initdb.get("localeProvider") == "icu"
    ),
    "!has(self.icuRules) || self.localeProvider == 'icu'": (
        lambda initdb: "icuRules" not in initdb or initdb.get("localeProvider") == "icu"
    ),
}


@pytest.mark.parametrize("variant", ["base", "local"])
def test_the_crds_cel_rules_hold(variant: str) -> None:
    for obj in custom_resources(variant):
        definition = crd(obj["apiVersion"], obj["kind"])
        (served,) = [v for v in definition["spec"]["versions"] if v["served"]]
        for path, rule, value in cel_rules_reached(served["schema"]["openAPIV3Schema"], obj):
            assert rule in CEL_CHECKS, f"{key(obj)}{path}: add a check for the CRD's rule {rule!r}"
            assert CEL_CHECKS[rule](value), f"{key(obj)}{path} breaks {rule!r}"


def test_vendored_crds_are_documented_with_source_commit_and_licence() -> None:
    readme = (CRD_DIR / "README.md").read_text()
    for file in CRD_FILES.values():
        assert f"`{file}`" in readme, file
        assert crd(*next(k for k, v in CRD_FILES.items() if v == file))["kind"] == "CustomResourceDefinition"
    assert sorted(path.name for path in CRD_DIR.glob("*.yaml")) == sorted(CRD_FILES.values())
    assert len(re.findall(r"\b[0-9a-f]{40}\b", readme)) >= 3, "each source's commit"
    for licence in (CRD_DIR / "licenses").iterdir():
        assert f"licenses/{licence.name}" in readme, licence.name


# --- agreement with the fleet, the compose file and the Procfile ------------------------------------


@pytest.fixture(scope="module")
def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_compose({})["services"]
    return services


def pod_environment(obj: dict[str, Any], documents: list[dict[str, Any]]) -> dict[str, str]:
    """A Deployment's container environment, its ConfigMap's and the operators' Secrets' resolved."""
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    configmaps = by_kind(documents, "ConfigMap")
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environment.update(configmaps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            assert (reference["name"], reference["key"]) == k8s.SECRET_ENVIRONMENT[variable["name"]]
            environment[variable["name"]] = SAMPLE_SECRET_VALUES[variable["name"]]
    return environment


@pytest.mark.parametrize("variant", ["base", "local"])
def test_manifests_compose_and_procfile_agree_on_services_ports_and_images(
    variant: str, compose_services: dict[str, Any]
) -> None:
    documents = VARIANT_DOCUMENTS[variant]()
    deployments, services = by_kind(documents, "Deployment"), by_kind(documents, "Service")
    assert set(deployments) == set(services) == set(SERVICES_BY_NAME)
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines()[1:])
    for spec in SERVICES:
        (container,) = deployments[spec.name]["spec"]["template"]["spec"]["containers"]
        # The image's CMD runs the Procfile's line (devtools/container.py): nothing overrides it.
        assert "command" not in container
        assert "args" not in container
        assert run_argv(spec)[2] == procfile[spec.name]
        assert container["image"] == f"{compose_services[spec.name]['image']}:latest"
        assert container["ports"] == [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
        (port,) = services[spec.name]["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (spec.port, "http")
        selector = services[spec.name]["spec"]["selector"]
        assert selector.items() <= deployments[spec.name]["spec"]["template"]["metadata"]["labels"].items()
        assert deployments[spec.name]["spec"]["selector"]["matchLabels"] == selector


@pytest.mark.parametrize("variant", ["base", "local"])
def test_every_variable_a_pod_gets_is_a_setting_of_its_service(variant: str, compose_services: dict[str, Any]) -> None:
    documents = VARIANT_DOCUMENTS[variant]()
    for spec in SERVICES:
        settings = k8s.settings_class(spec.name)
        environment = pod_environment(by_kind(documents, "Deployment")[spec.name], documents)
        unknown = {name for name in environment if name.lower() not in settings.model_fields}
        assert not unknown, f"{spec.name} ignores {sorted(unknown)} (not fields of its Settings)"
        required = {name for name, field in settings.model_fields.items() if field.is_required()}
        assert not required - {name.lower() for name in environment}
        parsed = settings.model_validate({name.lower(): value for name, value in environment.items()}).model_dump()
        assert parsed["service_name"] == spec.name
        # The same variables compose passes, at compose's values; the infrastructure's from the Secrets.
        compose_environment = environment_of(compose_services[spec.name])
        extra = set(environment) - set(compose_environment)
        assert extra == set(k8s.service_environment(spec, k8s.BASE)), spec.name
        for name, value in compose_environment.items():
            if name in k8s.COMPOSE_ONLY_ENVIRONMENT:
                assert name not in environment, f"{spec.name}: {name} means nothing on Kubernetes"
                continue
            assert name in environment, f"{spec.name}: compose passes {name}, the pod does not get it"
            if name not in k8s.SECRET_ENVIRONMENT:
                assert environment[name] == value, f"{spec.name}: {name}"
        assert parsed["database_url"].startswith("postgresql+asyncpg://")
        assert parsed["database_url"].endswith(f"/{k8s.DATABASE}")


def test_the_urls_name_the_operators_services_and_secrets() -> None:
    rabbitmq, postgres = k8s.rabbitmq_cluster(k8s.BASE), k8s.postgres_cluster(k8s.BASE)
    # cluster-operator: Service <name>, Secret <name>-default-user; CNPG: Service <name>-rw, Secret <name>-app.
    assert rabbitmq["metadata"]["name"] == k8s.RABBITMQ_SERVICE
    assert f"{rabbitmq['metadata']['name']}-default-user" == k8s.RABBITMQ_USER_SECRET
    assert f"{postgres['metadata']['name']}-app" == k8s.POSTGRES_APP_SECRET
    assert f"{postgres['metadata']['name']}-rw" == k8s.POSTGRES_PRIMARY_SERVICE
    assert postgres["spec"]["bootstrap"]["initdb"] == {"database": k8s.DATABASE, "owner": k8s.DATABASE}


@pytest.mark.parametrize("variant", ["base", "local"])
def test_probes_resources_and_shutdown_follow_the_image_and_compose(
    variant: str, compose_services: dict[str, Any]
) -> None:
    check = k8s.dockerfile_healthcheck()
    assert (check.interval_s, check.timeout_s, check.retries, check.start_period_s) == (10, 5, 3, 60)
    for obj in by_kind(VARIANT_DOCUMENTS[variant](), "Deployment").values():
        pod = obj["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= check.start_period_s
        assert container["livenessProbe"]["periodSeconds"] == check.interval_s
        assert container["livenessProbe"]["failureThreshold"] == check.retries
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, obj["metadata"]["name"]
        # Compose's grace period, which covers uvicorn's 15 s graceful shutdown after the preStop pause.
        grace = pod["terminationGracePeriodSeconds"]
        assert f"{grace}s" == compose_services[obj["metadata"]["name"]]["stop_grace_period"]
        assert int(container["lifecycle"]["preStop"]["exec"]["command"][1]) + 15 < grace
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert "replicas" not in obj["spec"], "the autoscaler owns the count"


def cpu_milli(quantity: str) -> int:
    return int(quantity.removesuffix("m")) if quantity.endswith("m") else int(float(quantity) * 1000)


@pytest.mark.parametrize("variant", [k8s.BASE, k8s.LOCAL], ids=lambda variant: variant.name)
def test_report_workers_get_a_core_each_and_keda_counts_them(variant: k8s.Variant) -> None:
    documents = k8s.base_objects(variant)["reportservice.yaml"]
    deployment = next(obj for obj in documents if obj["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    environment = {item["name"]: item.get("value") for item in container["env"]}
    workers = int(environment["REPORT_WORKERS"])
    assert workers == variant.report_workers
    assert cpu_milli(container["resources"]["requests"]["cpu"]) == workers * 1000 + k8s.REPORT_LOOP_CPU_M
    assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"]
    scaled = next(obj for obj in documents if obj["kind"] == "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert float(trigger["metadata"]["value"]) == k8s.TARGET_UTILISATION * workers


# --- scaling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "local"])
def test_keda_scales_the_four_consumers_and_an_hpa_the_rest(variant: str) -> None:
    documents = VARIANT_DOCUMENTS[variant]()
    scaled, hpas = by_kind(documents, "ScaledObject"), by_kind(documents, "HorizontalPodAutoscaler")
    assert set(scaled) == KEDA_SCALED
    assert set(hpas) == set(SERVICES_BY_NAME) - KEDA_SCALED  # never two autoscalers on one Deployment
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": k8s.CPU_TARGET_PERCENT}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    authentications = by_kind(documents, "TriggerAuthentication")
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        queues = [trigger["metadata"]["queueName"] for trigger in spec["triggers"] if trigger["type"] == "rabbitmq"]
        # Queue names come from the message map: every trigger watches a queue this service consumes.
        consumed = {queue.name for queue in topology.queues_consumed_by(name)}
        assert queues, name
        assert set(queues) <= consumed, name
        for trigger in spec["triggers"]:
            if trigger["type"] == "rabbitmq":
                check_rabbitmq_trigger(trigger, authentications)
            else:
                assert trigger == {
                    "type": "cpu",
                    "metricType": "Utilization",
                    "metadata": {"value": str(k8s.CPU_TARGET_PERCENT)},
                }
    assert {
        trigger["metadata"]["queueName"]
        for obj in scaled.values()
        for trigger in obj["spec"]["triggers"]
        if trigger["type"] == "rabbitmq"
    } == {
        topology.USER_REGISTERED.name,
        topology.PAYMENT_INITIATED.name,
        topology.STOCK_RESERVED.name,
        topology.REPORT_JOBS.name,
        topology.CLICK_TRACKED.name,
    }
    # The containers the cpu triggers and HPAs measure against have a CPU request.
    for obj in by_kind(documents, "Deployment").values():
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        assert cpu_milli(container["resources"]["requests"]["cpu"]) > 0


def check_rabbitmq_trigger(trigger: dict[str, Any], authentications: dict[str, dict[str, Any]]) -> None:
    """The rules KEDA's rabbitmq scaler (v2.20) applies to its metadata when it parses a trigger."""
    metadata = trigger["metadata"]
    assert set(metadata) == {"protocol", "host", "vhostName", "queueName", "mode", "value"}
    assert metadata["protocol"] == "http"  # QueueLength then counts unacknowledged deliveries too
    assert metadata["mode"] == "QueueLength"
    assert float(metadata["value"]) > 0
    assert all(isinstance(value, str) for value in metadata.values())
    host = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", metadata["host"])
    assert host, metadata["host"]
    assert host.groups() == (k8s.RABBITMQ_SERVICE, k8s.NAMESPACE, str(k8s.RABBITMQ_MANAGEMENT_PORT))
    authentication = authentications[trigger["authenticationRef"]["name"]]
    references = {ref["parameter"]: (ref["name"], ref["key"]) for ref in authentication["spec"]["secretTargetRef"]}
    # Username and password go together; the Secret is the one the cluster operator writes.
    assert references == {
        "username": (k8s.RABBITMQ_USER_SECRET, "username"),
        "password": (k8s.RABBITMQ_USER_SECRET, "password"),
    }


@pytest.mark.parametrize("variant", [k8s.BASE, k8s.LOCAL], ids=lambda variant: variant.name)
def test_thresholds_and_bounds_are_the_capacity_models(variant: k8s.Variant) -> None:
    documents = [obj for objects in k8s.base_objects(variant).values() for obj in objects]
    scaled_objects = by_kind(documents, "ScaledObject")
    for scaled in k8s.scaled_services(variant):
        spec = scaled_objects[scaled.service.name]["spec"]
        values = {
            t["metadata"]["queueName"]: t["metadata"]["value"] for t in spec["triggers"] if t["type"] == "rabbitmq"
        }
        assert values == {consumer.queue.name: str(consumer.threshold) for consumer in scaled.consumers}
        assert spec["maxReplicaCount"] == scaled.max_replicas(variant)
        assert spec["minReplicaCount"] == variant.min_replicas
        for consumer in scaled.consumers:
            # In steady state at the design peak the queue holds peak x holding time; KEDA then asks for
            # at least what the model says the peak needs, and not over one replica more.
            peak = k8s.DESIGN_PEAK[consumer.queue.name]
            keda_asks = math.ceil(peak * consumer.hold_s / consumer.threshold)
            assert consumer.replicas_for(peak) <= keda_asks <= consumer.replicas_for(peak) + 1, consumer.queue.name
            assert consumer.threshold <= k8s.TARGET_UTILISATION * consumer.rate * consumer.hold_s


def test_the_capacity_doc_states_the_thresholds_the_manifests_carry() -> None:
    doc = k8s.CAPACITY_DOC.read_text()
    for scaled in k8s.scaled_services(k8s.BASE):
        for consumer in scaled.consumers:
            row = next(
                line
                for line in doc.splitlines()
                if line.startswith(f"| `{consumer.queue.name}` | {scaled.service.name}")
            )
            assert row.endswith(f"**{consumer.threshold}** |"), row


def test_the_model_uses_the_ledger_when_the_bench_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.ledger import build_ledger

    results = json.loads(k8s.BENCH_RESULTS.read_text())
    services = [spec.name for spec in SERVICES]
    cpu = {name: 1.0 for name in services} | {"rabbitmq": 1.0, "postgresql": 1.0, "bare endpoint": 1.0}
    cpu["emailservice"] = 0.61
    ledger = build_ledger(
        cpu_s=cpu,
        services=services,
        requests={"total": 100.0, "accepted": 100.0, "accepted_clicks": 50.0},
        message_counts={"published_clicks": 0, "published_other": 0, "delivered_clicks": 0, "delivered_other": 0},
        transactions={"committed": 0.0, "rolled_back": 0.0},
        bare_requests=10.0,
        window_s=60.0,
    )
    ledger["idle_cpu_s_per_s"] = {"emailservice": 0.001}
    results["ledger"] = ledger
    results["end_to_end"][topology.USER_REGISTERED.name]["count"] = 110.0
    monkeypatch.setattr(k8s, "bench_results", lambda: results)
    (email,) = k8s.scaled_by_name(k8s.BASE)["emailservice"].consumers
    assert email.cpu_ms_per_message == pytest.approx((0.61 - 0.06) * 1000 / 110, abs=0.01)  # 5 ms
    assert email.cpu_rate == pytest.approx(200, abs=0.5)
    assert email.bound == "concurrency"  # 40/s by its delay, 200/s by its CPU
    assert "cost ledger" in k8s.render_capacity_doc()


def test_a_consumer_bound_by_its_cpu_takes_what_its_cpu_allows() -> None:
    consumer = k8s.Consumer(topology.USER_REGISTERED, 20, "", 0.5, "", cpu_rate=10.0)
    assert consumer.rate == 10.0
    assert consumer.bound == "CPU"
    assert consumer.threshold == 3.7  # 0.75 x 10/s x 0.5 s, two figures, down
    assert consumer.replicas_for(15.0) == 2


@pytest.mark.parametrize("variant", [k8s.BASE, k8s.LOCAL], ids=lambda variant: variant.name)
def test_postgres_accepts_every_pool_at_every_maximum(variant: k8s.Variant) -> None:
    documents = [obj for objects in k8s.base_objects(variant).values() for obj in objects]
    (cluster,) = by_kind(documents, "Cluster").values()
    max_connections = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    maxima = {name: obj["spec"]["maxReplicaCount"] for name, obj in by_kind(documents, "ScaledObject").items()}
    maxima |= {name: obj["spec"]["maxReplicas"] for name, obj in by_kind(documents, "HorizontalPodAutoscaler").items()}
    assert set(maxima) == set(SERVICES_BY_NAME)
    connections = 0
    for name, replicas in maxima.items():
        settings = k8s.pod_settings(SERVICES_BY_NAME[name], variant)
        connections += replicas * (settings.db_pool_size + settings.db_max_overflow)
    assert max_connections >= connections + k8s.POSTGRES_CONNECTION_RESERVE


# --- infrastructure and monitoring ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "local"])
def test_rabbitmq_is_a_three_node_cluster_with_composes_plugins(variant: str) -> None:
    (cluster,) = by_kind(VARIANT_DOCUMENTS[variant](), "RabbitmqCluster").values()
    assert cluster["spec"]["replicas"] == 3
    plugins = (ROOT / "rabbitmq" / "enabled_plugins").read_text().strip()
    assert plugins == f"[{','.join(cluster['spec']['rabbitmq']['additionalPlugins'])}]."
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(cluster["spec"]["rabbitmq"]["additionalPlugins"])
    config = dict(line.split(" = ") for line in cluster["spec"]["rabbitmq"]["additionalConfig"].splitlines())
    assert config["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    assert config["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"


@pytest.mark.parametrize("variant", ["base", "local"])
def test_every_pod_carries_prometheus_annotations(variant: str) -> None:
    documents = VARIANT_DOCUMENTS[variant]()
    for name, obj in by_kind(documents, "Deployment").items():
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(SERVICES_BY_NAME[name].port),
            "prometheus.io/path": "/metrics",
        }
    (rabbitmq,) = by_kind(documents, "RabbitmqCluster").values()
    pod = rabbitmq["spec"]["override"]["statefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert pod["prometheus.io/port"] == "15692"
    (postgres,) = by_kind(documents, "Cluster").values()
    assert postgres["spec"]["inheritedMetadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_the_clusters_prometheus_has_composes_job_names() -> None:
    config = yaml.safe_load(k8s.PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    compose = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    compose_jobs = {job["job_name"] for job in compose["scrape_configs"]} - {"cadvisor", "prometheus"}
    assert compose_jobs <= jobs  # the dashboards select on these
    assert jobs - compose_jobs == {"postgresql"}


def test_promtool_accepts_the_clusters_prometheus_config(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so promtool checks everything else
    (relabelling, paths, intervals) with each job's discovery swapped for a static target, and the
    discovery blocks are checked here: pods of the fleet's namespace."""
    promtool = required_tool("promtool")
    config = yaml.safe_load(k8s.PROMETHEUS_CONFIG.read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod", "namespaces": {"names": [k8s.NAMESPACE]}}]
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(checked)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_relabelling_scrapes_the_annotated_port_under_the_services_job() -> None:
    """The relabel rules applied by hand to one pod, as Prometheus applies them (anchored regexes)."""
    config = yaml.safe_load(k8s.PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "emailservice"]
    labels = {
        "__address__": "10.0.0.7:8107",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "emailservice",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": "8107",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_pod_name": "emailservice-abc",
        "__metrics_path__": "/metrics-default",
    }
    for rule in job["relabel_configs"]:
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action") == "keep":
            assert match, rule
            continue
        if match:
            labels[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    assert labels["__address__"] == "10.0.0.7:8107"
    assert labels["__metrics_path__"] == "/metrics"
    assert labels["instance"] == "emailservice-abc"
