"""The Kubernetes manifests in deploy/kubernetes/: valid against the Kubernetes schemas
(kubernetes-validate, which bundles them: no network), hardened (non-root, read-only root
filesystem, resources, secrets by reference), and true to ocimirror: every command and
flag they pass exists, the ConfigMap's config validates, and the probe paths answer 200 on
a real `serve` and `proxy` started with the manifests' own arguments.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from ocimirror.cli import app
from ocimirror.testkit.command import Background, run_ocimirror
from ocimirror.testkit.proxy import call
from ocimirror.testkit.registry import LocalRegistry, free_port

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
#: The Kubernetes version the manifests are validated for (docs/deploy.md says so).
K8S_VERSION = "1.30.0"
IMAGE = "registry.example.com/ocimirror:0.1.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Deployment":
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    if doc["kind"] == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, doc in documents():
        spec = pod_spec(doc)
        if spec is not None:
            for c in spec["containers"]:
                yield name, spec, c


def by_kind(kind: str, component: str) -> dict[str, Any]:
    for _, doc in documents():
        labels = doc["metadata"]["labels"]
        if doc["kind"] == kind and labels.get("app.kubernetes.io/component") == component:
            return doc
    raise AssertionError(f"no {kind} for {component}")


def test_every_shape_is_there() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    assert {
        ("CronJob", "ocimirror-sync"),
        ("Deployment", "ocimirror-serve"),
        ("Service", "ocimirror-serve"),
        ("Deployment", "ocimirror-proxy"),
        ("Deployment", "ocimirror-worker"),
        ("Service", "ocimirror-proxy"),
        ("ConfigMap", "ocimirror-config"),
        ("Secret", "ocimirror-credentials"),
        ("PersistentVolumeClaim", "ocimirror-serve-state"),
        ("PersistentVolumeClaim", "ocimirror-sync-state"),
    } <= kinds


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[n for n, _ in documents()])
def test_manifest_matches_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    doc = by_kind("Deployment", "proxy")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root for unshare --net"
)
def test_validation_needs_no_network() -> None:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    files = [str(p) for p in sorted(MANIFESTS.glob("*.yaml"))]
    cmd = ["unshare", "--net", str(tool), "--strict", "-k", K8S_VERSION, *files]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(documents())


@pytest.mark.parametrize(
    ("name", "spec", "container"), list(containers()), ids=[n for n, _, _ in containers()]
)
def test_pods_are_hardened(name: str, spec: dict[str, Any], container: dict[str, Any]) -> None:
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the Containerfile's user
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert container["image"] == IMAGE
    assert "command" not in container  # the image's ENTRYPOINT is ocimirror
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Credentials only by reference to the Secret, never as literal values.
    for env in container.get("env", []):
        if "PASSWORD" in env["name"] or "TOKEN" in env["name"]:
            assert env["valueFrom"]["secretKeyRef"]["name"] == "ocimirror-credentials"


def _cli_command(name: str) -> Any:
    """The command `ocimirror NAME` as the CLI parses it (typer's click command)."""
    commands = getattr(typer.main.get_command(app), "commands", {})
    command = commands.get(name)
    assert command is not None, f"ocimirror has no command {name!r}"
    return command


@pytest.mark.parametrize(
    ("name", "spec", "container"), list(containers()), ids=[n for n, _, _ in containers()]
)
def test_args_are_real_ocimirror_commands_and_flags(
    name: str, spec: dict[str, Any], container: dict[str, Any]
) -> None:
    args = container["args"]
    command = _cli_command(args[0])
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for arg in args[1:]:
        if arg.startswith("-"):
            assert arg in options, f"{name}: ocimirror {args[0]} has no {arg}"
    # And the command line parses (click rejects a missing or malformed value).
    ctx = command.make_context(f"ocimirror {args[0]}", list(args[1:]), resilient_parsing=False)
    ctx.close()
    for port in container.get("ports", []):
        assert str(port["containerPort"]) == args[args.index("--port") + 1]
    # Every ${VAR} of the mirror config the pod reads is in its environment.
    if "--config" in args:
        wanted = set(re.findall(r"\$\{(\w+)\}", config_text()))
        assert wanted <= {e["name"] for e in container["env"]}


def config_text() -> str:
    for _, doc in documents():
        if doc["kind"] == "ConfigMap":
            text: str = doc["data"]["mirror.yaml"]
            return text
    raise AssertionError("no ConfigMap")


def test_the_configmap_config_validates(tmp_path: Path) -> None:
    path = tmp_path / "mirror.yaml"
    path.write_text(config_text())
    result = run_ocimirror("config", "validate", str(path), env={"MIRROR_PASSWORD": "x"})
    assert result.returncode == 0, result.stderr
    assert "2 mirrors" in result.stdout + result.stderr


def _probes(container: dict[str, Any]) -> list[str]:
    return [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]


def _local_args(args: list[str], port: int, tmp: Path) -> list[str]:
    """The manifest's arguments with its paths and port moved to this machine."""
    moved = {"/config/mirror.yaml": str(tmp / "mirror.yaml"), "/cache": str(tmp / "cache")}
    out = [moved.get(a, a).replace("sqlite:////data/", f"sqlite:///{tmp}/") for a in args]
    out[out.index("--port") + 1] = str(port)
    if "--host" in out:
        out[out.index("--host") + 1] = "127.0.0.1"
    else:
        out += ["--host", "127.0.0.1"]
    return out


def _answers_200(proc: Background, port: int, paths: list[str], what: str) -> None:
    proc.wait_ready(lambda: call(port, "GET", "/healthz").status == 200, what)
    for path in paths:
        assert call(port, "GET", path).status == 200, path


def test_serve_probe_paths_answer_200(tmp_path: Path) -> None:
    container = by_kind("Deployment", "serve")["spec"]["template"]["spec"]["containers"][0]
    assert _probes(container) == ["/healthz", "/readyz"]
    # The manifest's arguments, with a config of no mirrors (nothing reaches the network).
    (tmp_path / "mirror.yaml").write_text("mirrors: []\n")
    port = free_port()
    env = {**os.environ, "OCIMIRROR_API_TOKENS": "probe-test-token"}
    proc = Background(_local_args(container["args"], port, tmp_path), tmp_path / "s.log", env)
    try:
        _answers_200(proc, port, _probes(container), "serve")
    finally:
        proc.stop()


def test_proxy_probe_paths_answer_200(tmp_path: Path, registry: LocalRegistry) -> None:
    container = by_kind("Deployment", "proxy")["spec"]["template"]["spec"]["containers"][0]
    assert _probes(container) == ["/healthz", "/healthz"]  # the proxy has no /readyz
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "REPO_PREFIX")}
    env["REGISTRY_HOST"] = registry.host
    proc = Background(_local_args(container["args"], port, tmp_path), tmp_path / "p.log", env)
    try:
        _answers_200(proc, port, _probes(container), "proxy")
        assert call(port, "GET", "/readyz").status != 200  # so /healthz it is, for both
    finally:
        proc.stop()
