"""Read what ``deploy/`` holds, for tests/test_deploy*.py: the Kubernetes manifests by kind,
the Dockerfile's stages, the build context its ignore file lets through, the compose file."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s, by ``Kind/name``."""
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def secret_env() -> dict[str, str]:
    """The Secret's values, as the Deployment's ``envFrom`` hands them to the container."""
    data: dict[str, str] = manifests()["Secret/turnout-secrets"]["stringData"]
    return data


def gateway_config_text() -> str:
    text: str = manifests()["ConfigMap/turnout-config"]["data"]["turnout.yaml"]
    return text


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


@dataclass
class Stage:
    name: str
    base: str  # an image, or an earlier stage's name
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def last(self, instruction: str) -> str | None:
        found = [args for ins, args in self.instructions if ins == instruction]
        return found[-1] if found else None


def dockerfile_stages(path: Path = DEPLOY / "Dockerfile") -> list[Stage]:
    """The stages in order; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else f"stage{len(stages)}"
            stages.append(Stage(name, words[0]))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def effective_user(stages: list[Stage], name: str) -> str | None:
    """The USER a stage runs as: its own last USER, else its parent stage's, else None (root)."""
    by_name = {s.name: s for s in stages}
    stage: Stage | None = by_name[name]
    while stage is not None:
        user = stage.last("USER")
        if user is not None:
            return user
        stage = by_name.get(stage.base)
    return None


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker's ignore ``patterns`` keep ``relative`` out of the build context: the
    last pattern that matches the path, or a folder above it, decides; ``!`` lets it back in."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, glob) for p in prefixes):
            out = not negate
    return out


def ignore_patterns(path: Path = DEPLOY / "Dockerfile.dockerignore") -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
