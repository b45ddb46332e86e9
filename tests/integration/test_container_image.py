"""The image's Python environment, built the way the Dockerfile builds it, and its entry points run
against the real broker and database.

No Docker engine runs here, so the build is replayed: the Dockerfile's WORKDIR and COPY instructions
copy from the build context (the repository filtered by .dockerignore, as `docker build` sends it)
into a scratch directory, and its `pip` commands run there with a fresh virtual environment first on
PATH, as /opt/venv is in the image. (The pip cache is allowed, unlike in the image, to keep this fast.)
The other RUN steps (creating the user and the venv) have no counterpart here. Built once per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.fleet import SERVICES, SERVICES_BY_NAME
from devtools.rabbitmq_nodes import free_port
from tests.support.containers import (
    ROOT,
    build_context,
    dockerfile_env,
    dockerfile_instructions,
    environment_of,
    load_compose,
)
from tests.support.infra import Infra

pytestmark = pytest.mark.integration

BUILD_TIMEOUT_S = 600
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ImageBuild:
    venv: Path
    workdir: Path
    scratch: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def environment(self, **extra: str) -> dict[str, str]:
        """The image's ENV (with its venv's paths mapped to this one) plus `extra`."""
        env = {key: value for key, value in dockerfile_env(dockerfile_instructions()).items() if "$" not in value}
        env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            VIRTUAL_ENV=str(self.venv),
            HOME=str(self.scratch),
        )
        env.pop("PIP_NO_CACHE_DIR", None)
        env.update(extra)
        return env


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        if line and not line.startswith(("#", "-")):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def installed(python: Path | str, cwd: Path) -> dict[str, str]:
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return {canonical(package["name"]): package["version"] for package in json.loads(listing.stdout)}


def replay_build(scratch: Path) -> ImageBuild:
    context = set(build_context())
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    build = ImageBuild(venv=venv, workdir=scratch, scratch=scratch)
    workdir = scratch
    for instruction in dockerfile_instructions():
        if instruction.keyword == "WORKDIR":
            workdir = scratch / instruction.arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, destination = instruction.arguments.split()
            target = workdir / destination
            for source in sources:
                prefix = "" if source == "." else source.rstrip("/")
                for relative in sorted(context):
                    if prefix and relative != prefix and not relative.startswith(prefix + "/"):
                        continue
                    copied = target / (relative if source == "." else Path(relative).name)
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / relative, copied)
        elif instruction.keyword == "RUN":
            for step in instruction.arguments.split("&&"):
                if step.strip().startswith("pip "):
                    subprocess.run(
                        ["sh", "-c", step.strip()],
                        cwd=workdir,
                        env=build.environment(),
                        check=True,
                        timeout=BUILD_TIMEOUT_S,
                    )
    return ImageBuild(venv=venv, workdir=workdir, scratch=scratch)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageBuild:
    return replay_build(tmp_path_factory.mktemp("image"))


def test_the_image_holds_exactly_the_pinned_runtime_packages(image: ImageBuild) -> None:
    runtime = pinned(ROOT / "requirements.txt")
    in_image = installed(image.bin / "python", image.scratch)
    # pip and setuptools come with every venv (in the image too); the project is installed last.
    in_image = {name: version for name, version in in_image.items() if name not in {"pip", "setuptools"}}
    assert in_image.pop("event-fleet") == "0.1.0"
    assert in_image == runtime
    # ... and the local runner's environment has the same versions of every one of them.
    local = installed(sys.executable, ROOT)
    assert {name: local.get(name) for name in runtime} == runtime


def test_the_image_has_no_broken_requirements(image: ImageBuild) -> None:
    check = subprocess.run([str(image.bin / "pip"), "check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_service_imports_from_the_installed_project(image: ImageBuild) -> None:
    """From a directory without the sources: the modules must come from the installed project."""
    names = [service.name for service in SERVICES]
    code = (
        "import importlib, json, sys\n"
        "from fastapi import FastAPI\n"
        "found = {}\n"
        f"for name in {names!r}:\n"
        "    module = importlib.import_module(name + '.main')\n"
        "    assert isinstance(module.app, FastAPI), name\n"
        "    found[name] = module.__file__\n"
        "print(json.dumps(found))\n"
    )
    elsewhere = image.scratch / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    result = subprocess.run(
        [str(image.bin / "python"), "-c", code],
        cwd=elsewhere,
        env=image.environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    site_packages = str(image.venv / "lib")
    assert all(path.startswith(site_packages) for path in json.loads(result.stdout).values()), result.stdout


def test_the_build_time_check_accepts_every_service_and_refuses_others(image: ImageBuild) -> None:
    (check,) = [i.arguments for i in dockerfile_instructions() if i.keyword == "RUN" and "devtools" in i.arguments]
    for service in [*SERVICES_BY_NAME, "", "mailservice"]:
        result = subprocess.run(
            ["sh", "-c", check],
            cwd=image.workdir,
            env=image.environment(SERVICE=service),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (result.returncode == 0) == (service in SERVICES_BY_NAME), (service, result.stderr)


def run_exec_form(argv: list[str], env: dict[str, str], cwd: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=cwd, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def container_environment(image: ImageBuild, infra: Infra) -> dict[str, str]:
    """emailservice's environment as compose gives it, pointed at this run's broker and database."""
    service = SERVICES_BY_NAME["emailservice"]
    environment = environment_of(load_compose({})["services"][service.name])
    environment.update(RABBITMQ_URL=infra.rabbitmq_url, DATABASE_URL=infra.database_url, EMAIL_SEND_DELAY_S="0")
    return image.environment(SERVICE=service.name, **environment, **{service.port_variable: str(free_port())})


def test_the_image_command_serves_passes_its_healthcheck_and_stops_gracefully(
    image: ImageBuild, container_environment: dict[str, str], tmp_path: Path
) -> None:
    instructions = dockerfile_instructions()
    (cmd,) = [i.exec_form() for i in instructions if i.keyword == "CMD"]
    (healthcheck,) = [i.exec_form() for i in instructions if i.keyword == "HEALTHCHECK"]

    def healthy() -> bool:
        probe = subprocess.run(healthcheck, env=container_environment, cwd=image.workdir, timeout=30)
        return probe.returncode == 0

    assert not healthy(), "the health check passes with no service running"
    log = tmp_path / "emailservice.log"
    with log.open("wb") as output:
        process = run_exec_form(cmd, container_environment, image.workdir, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        # The shell exec'd uvicorn: Docker's SIGTERM reaches the server itself, not a wrapper.
        assert "uvicorn" in Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
        port = container_environment["EMAILSERVICE_PORT"]
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["service"] == "emailservice"
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal (Docker reports exit code 143).
        assert process.wait(timeout=STOP_TIMEOUT_S) in {0, -signal.SIGTERM}, log.read_text()
        assert "Application shutdown complete." in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not healthy()
