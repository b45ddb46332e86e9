"""Read the container files as Docker and compose read them, so tests can check them without an engine.

- `dockerfile_instructions`: the Dockerfile's instructions (continuation lines joined).
- `build_context`: the files `docker build .` sends, after `.dockerignore` (Docker's matching rules:
  patterns in order, the last one that matches a path or one of its parent directories decides).
- `interpolate`: compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose-async.yml"
ENV_EXAMPLE = ROOT / ".env.example"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK (after HEALTHCHECK's options and `CMD`)."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index(" CMD ") + len(" CMD ") :]
        parsed = json.loads(text)
        assert isinstance(parsed, list), f"{self.keyword} is not in exec (JSON) form: {self.arguments}"
        return [str(part) for part in parsed]


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """ENV values in `KEY=value` form (the form the Dockerfile uses), later ones winning."""
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for assignment in instruction.arguments.split():
                key, _, value = assignment.partition("=")
                env[key] = value
    return env


# --- .dockerignore -------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match syntax as Docker extends it: `*` stays within a path element, `**` does not."""
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            index += 2
            if pattern.startswith("/", index):  # `**/` matches zero or more directories
                index += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        index += 1
    return re.compile(f"^{out}$")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = str(PurePosixPath(line.removeprefix("!").strip().lstrip("/")))
        rules.append((negated, _pattern_regex(cleaned)))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[: length + 1]) for length in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def build_context(root: Path = ROOT) -> list[str]:
    """Relative paths of the files `docker build` would send from `root`."""
    rules = dockerignore_rules(root / ".dockerignore")

    def walk(directory: Path) -> Iterator[str]:
        for entry in sorted(directory.iterdir()):
            relative = entry.relative_to(root).as_posix()
            if entry.is_dir() and not entry.is_symlink():
                yield from walk(entry)
            elif not is_ignored(relative, rules):
                yield relative

    return list(walk(root))


# --- compose ----------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(text: str, environment: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name"), match.group("op"), match.group("default")
        if op == ":-":
            return environment.get(name) or default
        if op == "-":
            return environment.get(name, default)
        return environment.get(name, "")

    return _VARIABLE.sub(replace, text)


def compose_variables(text: str) -> dict[str, str]:
    """Every variable the compose file interpolates, with its default."""
    return {
        match.group("name"): match.group("default") or "" for match in _VARIABLE.finditer(text) if match.group("name")
    }


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def load_compose(environment: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose reads it: variables interpolated (merge keys resolved by YAML)."""
    loaded = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), environment or {}))
    assert isinstance(loaded, dict)
    return loaded


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}
