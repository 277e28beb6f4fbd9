"""deploy/kubernetes: every overlay renders with `kubectl kustomize` and every object it makes,
and every Secret make-secrets makes, validates against the Kubernetes API schemas
(kubernetes-validate, strict: no unknown field), for the oldest release the bubblewrap
overlay's pod settings need (1.33) and the newest the package knows. Then what the schemas
cannot see: the executor pod's security settings are exactly the documented ones, every
$(VAR) an env value uses is defined before it, every Service and policy selects pods that
exist, and each executor certificate names its pod. A real cluster runs scripts/k8s-e2e.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from harness import REPO

pytestmark = pytest.mark.timeout(120)

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("bubblewrap", "docker", "external-database")
# hostUsers with procMount: Unmasked (the bubblewrap executor) are on by default from 1.33.
VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
# Made by make-secrets, not by the manifests.
SECRETS = {"corral-scheduler-tls", "corral-memory-tls", "corral-gateway-tls", "corral-executor-tls", "corral-database"}
EXECUTORS = 2


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        message = "kubectl is not on PATH (it renders the kustomize overlays: `kubectl kustomize`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@functools.cache
def rendered(overlay: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


@functools.cache
def validate(text: str) -> None:
    """One object (as JSON: the overlays share most of theirs, each is validated once)."""
    obj = json.loads(text)
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {exc.message}") from None


def validate_all(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        validate(json.dumps(obj, sort_keys=True))


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, [o["metadata"]["name"] for o in objects if o["kind"] == kind])
    return matches[0]


def pod_templates(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    kubectl()
    ca = tmp_path_factory.mktemp("k8s") / "ca"
    result = subprocess.run(
        [str(KUBERNETES / "make-secrets"), str(ca), "--executors", str(EXECUTORS)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_overlay_renders_and_every_object_validates(overlay: str) -> None:
    objects = render(overlay)
    validate_all(objects)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert all(o["metadata"].get("namespace") == "corral" for o in objects if o["kind"] != "Namespace")
    database = [o for o in objects if o["metadata"]["name"] == "corral-postgres"]
    assert bool(database) == (overlay != "external-database")
    templates = pod_templates(objects)
    referenced: set[str] = set()
    for template in templates:
        spec = template["spec"]
        referenced |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec["containers"]:
            assert "requests" in container["resources"] and "limits" in container["resources"], container["name"]
            assert "readinessProbe" in container and "livenessProbe" in container, container["name"]
            defined: set[str] = set()
            for variable in container.get("env", []):
                used = set(re.findall(r"\$\(([A-Z_]+)\)", variable.get("value", "")))
                assert used <= defined, f"{container['name']}: {variable['name']} uses {used - defined} before it is set"
                defined.add(variable["name"])
                if "secretKeyRef" in variable.get("valueFrom", {}):
                    referenced.add(variable["valueFrom"]["secretKeyRef"]["name"])
    assert referenced <= SECRETS, referenced - SECRETS
    # Services and policies select pods that exist, so nothing is left unreachable by a typo.
    labels = [t["metadata"]["labels"] for t in templates]
    for obj in objects:
        if obj["kind"] == "Service":
            assert any(selects(obj["spec"]["selector"], pod) for pod in labels), obj["metadata"]["name"]
        if obj["kind"] in ("NetworkPolicy", "PodDisruptionBudget"):
            key = "podSelector" if obj["kind"] == "NetworkPolicy" else "selector"
            selector = obj["spec"][key].get("matchLabels", {})
            assert any(selects(selector, pod) for pod in labels), obj["metadata"]["name"]


def test_the_bubblewrap_executor_pod_has_exactly_the_documented_privileges() -> None:
    objects = render("bubblewrap")
    spec = named(objects, "StatefulSet", "corral-executor")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "corral/executor-bwrap:latest"
    assert spec["hostUsers"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "corral/executor-bwrap.json"},
        "appArmorProfile": {"type": "Unconfined"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "procMount": "Unmasked",
    }
    assert (REPO / "deploy" / "seccomp" / "executor-bwrap.json").is_file()
    # The key is mounted where sandboxes do not look (they bind /usr, /etc and /app).
    (tls,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert tls["mountPath"].startswith("/var/run/")
    # The sandboxes' network leaves through the executor pod: no private address of the cluster.
    policy = named(objects, "NetworkPolicy", "corral-executor")["spec"]
    internet = [peer["ipBlock"] for rule in policy["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(internet[0]["except"])
    autoscaler = named(objects, "HorizontalPodAutoscaler", "corral-executor")["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == "corral-executor"
    assert autoscaler["maxReplicas"] <= 8, "make-secrets issues 8 executor certificates by default"


def test_make_secrets_makes_what_the_pods_mount(secrets: list[dict[str, Any]]) -> None:
    validate_all(secrets)
    by_name = {s["metadata"]["name"]: s for s in secrets}
    assert set(by_name) == SECRETS
    assert all(s["metadata"]["namespace"] == "corral" for s in secrets)
    for role in ("scheduler", "memory", "gateway"):
        assert set(by_name[f"corral-{role}-tls"]["data"]) == {"ca.crt", f"{role}.crt", f"{role}.key"}
    executors = by_name["corral-executor-tls"]["data"]
    assert set(executors) == {"ca.crt"} | {f"corral-executor-{n}.{ext}" for n in range(EXECUTORS) for ext in ("crt", "key")}
    for n in range(EXECUTORS):
        cert = x509.load_pem_x509_certificate(base64.b64decode(executors[f"corral-executor-{n}.crt"]))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"spiffe://corral/executor/corral-executor-{n}" in san.get_values_for_type(x509.UniformResourceIdentifier)
        # The name the scheduler dials (base/executor.yaml's advertise address) and the probe's.
        assert f"corral-executor-{n}.corral-executor" in san.get_values_for_type(x509.DNSName)
    assert set(by_name["corral-database"]["data"]) == {"url", "password"}


def test_make_secrets_refuses_bad_input_saying_why(tmp_path: Path) -> None:
    kubectl()
    result = subprocess.run(
        [str(KUBERNETES / "make-secrets"), str(tmp_path / "ca"), "--executors", "many"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--executors takes a number, not 'many'" in result.stderr
