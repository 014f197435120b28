"""The kustomize base in deploy/: schema-valid manifests that agree with each other and with the service."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from model import runtime_env
from service.metrics import Metrics
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Schemas shipped by kubernetes-validate; 1.32 is the oldest minor still in wide use among managed clusters.
K8S_VERSION = "1.32.0"
# Read by model/runtime_env.py before Paddle is imported, so not a Settings field.
OUTSIDE_SETTINGS = {"JANUS_CACHE_DIR"}
MODEL_LOAD_BUDGET_S = 600


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources(kustomization) -> list[dict[str, Any]]:
    """The base's objects: each listed file, in order."""
    return [doc for name in kustomization["resources"] for doc in load_documents(DEPLOY / name)]


def one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


@pytest.fixture(scope="module")
def deployment(resources) -> dict[str, Any]:
    return one(resources, "Deployment")


@pytest.fixture(scope="module")
def container(deployment) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def settings_env(resources, container) -> dict[str, str]:
    """What the container's environment will hold: the ConfigMap it loads, then its own `env` values."""
    env: dict[str, str] = {}
    configmaps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


# schemas and the kustomization


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_passes_strict_schema_validation(path: Path):
    for doc in load_documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_rejects_a_misspelled_field(deployment):
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_in_deploy_and_nothing_else(kustomization):
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    assert len(set(kustomization["resources"])) == len(kustomization["resources"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_renders_the_listed_objects_with_the_configured_image(resources, kustomization):
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    identity = sorted((r["kind"], r["metadata"]["name"]) for r in resources)
    assert sorted((r["kind"], r["metadata"]["name"]) for r in rendered) == identity
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    image = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    wanted = kustomization["images"][0]
    assert image == f"{wanted['newName']}:{wanted['newTag']}"


def test_deployment_image_is_the_one_the_kustomization_retags(container, kustomization):
    assert container["image"].split(":")[0] in {entry["name"] for entry in kustomization["images"]}


# the Deployment and the service


def test_probes_use_health_for_startup_and_liveness_and_ready_for_readiness(container, settings_env):
    port = int(settings_env["JANUS_PORT"])
    assert port_number(container, container["ports"][0]["name"]) == port
    for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert port_number(container, check["port"]) == port, probe


def test_startup_probe_allows_minutes_for_model_loading(container):
    probe = container["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= MODEL_LOAD_BUDGET_S


def test_rollout_deadline_outlasts_the_startup_budget(deployment, container):
    probe = container["startupProbe"]
    assert deployment["spec"]["progressDeadlineSeconds"] > probe["periodSeconds"] * probe["failureThreshold"]


def test_requests_and_limits_one_gpu_with_cpu_and_memory(container):
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert str(requests["nvidia.com/gpu"]) == "1" and str(limits["nvidia.com/gpu"]) == "1"
    for name in ("cpu", "memory"):
        assert name in requests and name in limits, name


def test_service_runs_on_the_gpu_it_requests(settings_env):
    assert settings_env["JANUS_DEVICE"] == "gpu"


def test_weights_come_from_a_claim_mounted_read_only_at_the_model_dir(resources, deployment, container, settings_env):
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == settings_env["JANUS_MODEL_DIR"]]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    assert claim["claimName"] in {r["metadata"]["name"] for r in resources if r["kind"] == "PersistentVolumeClaim"}


def test_cache_dir_is_a_writable_volume(deployment, container, settings_env):
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == settings_env["JANUS_CACHE_DIR"]]
    assert len(mounts) == 1 and not mounts[0].get("readOnly", False)
    assert "emptyDir" in volumes[mounts[0]["name"]] or "persistentVolumeClaim" in volumes[mounts[0]["name"]]


def test_read_only_root_filesystem_leaves_every_path_the_server_writes_to_writable(
        container, settings_env, tmp_path, monkeypatch):
    """The server writes below its cache dir (it points HOME, and TMPDIR unless set, there itself before Paddle is
    imported) and, for code that names it, to /tmp: each must lie on a writable mount."""
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if not m.get("readOnly", False)]
    # Where the server points HOME and TMPDIR, worked out by its own start-up code on a stand-in for the cache dir.
    stand_in = tmp_path / "cache"
    monkeypatch.setenv("JANUS_CACHE_DIR", str(stand_in))
    for name in ("HOME", "TMPDIR"):
        if name in settings_env:
            monkeypatch.setenv(name, settings_env[name])
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    runtime_env.keep_writes_in_cache()
    cache = PurePosixPath(settings_env["JANUS_CACHE_DIR"])

    def in_pod(path: str) -> PurePosixPath:
        return cache / Path(path).relative_to(stand_in) if Path(path).is_relative_to(stand_in) else PurePosixPath(path)

    image_home = re.search(r"--home-dir (\S+)", (ROOT / "docker" / "Dockerfile.gpu").read_text())[1]
    written = {"JANUS_CACHE_DIR": cache, "HOME": in_pod(os.environ.get("HOME", image_home)),
               "TMPDIR": in_pod(os.environ.get("TMPDIR", "/tmp")), "/tmp": PurePosixPath("/tmp")}
    for what, path in written.items():
        assert any(path == mount or mount in path.parents for mount in writable), f"{what} ({path}) is read-only"


def test_grace_period_covers_prestop_sleep_and_drain_timeout(deployment, container, settings_env):
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    drain = float(settings_env["JANUS_DRAIN_TIMEOUT_S"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pre_stop >= 5, "endpoint removal needs a few seconds to reach every proxy"
    assert grace >= pre_stop + drain + 10


def test_pod_runs_as_the_images_non_root_user(deployment, container):
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    user = re.search(r"^USER (\d+)", (ROOT / "docker" / "Dockerfile.gpu").read_text(), re.MULTILINE)[1]
    assert pod["runAsUser"] == int(user)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_settings_come_from_the_configmap_and_are_valid(settings_env, container):
    assert container["envFrom"][0]["configMapRef"]["name"]
    janus = {k: v for k, v in settings_env.items() if k.startswith("JANUS_") and k not in OUTSIDE_SETTINGS}
    fields = {k.removeprefix("JANUS_").lower(): v for k, v in janus.items()}
    assert set(fields) <= set(Settings.model_fields), set(fields) - set(Settings.model_fields)
    fields.pop("model_dir")  # a path inside the pod
    Settings(**fields)


def test_api_key_is_read_from_an_optional_secret(container):
    [item] = [e for e in container["env"] if e["name"] == "JANUS_API_KEY"]
    assert "value" not in item
    assert item["valueFrom"]["secretKeyRef"]["optional"] is True


def test_service_and_pdb_select_the_deployment_pods(resources, deployment, container):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = one(resources, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"] == selector
    [port] = service["spec"]["ports"]
    assert port_number(container, port["targetPort"]) == port["port"] == 8000
    pdb = one(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_autoscaler_scales_the_deployment_on_the_exported_queue_gauge(resources, deployment):
    hpa = one(resources, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    [metric] = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    metrics = Metrics()
    assert f"# TYPE {name} gauge" in metrics.render().decode()
    metrics.on_queue(7, {"understand": 1, "generate": 4})  # what the engine reports for its waiting queue
    assert metrics.registry.get_sample_value(name) == 7
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_prometheus_adapter_rule_serves_the_metric_the_autoscaler_reads(resources):
    name = one(resources, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    values = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    [rule] = values["rules"]["custom"]
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["name"]["as"] == name
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_pods_are_scraped_on_the_service_port(deployment, container):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port_number(container, "http")
