"""The secrets scan (tests/secretscan.py) at work, and the places secrets are most likely to
leak, exercised with secrets in the configuration and logs at debug level: serve's log,
metrics, dashboard page, API answers and job errors; `sync --json`; the proxy's log,
metrics and error answers. The scan checks each of them (and the rest of the suite);
the assertions here say the same explicitly, so that they hold without the plugin too."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

from ocimirror.testkit import secrets
from ocimirror.testkit.command import run_ocimirror
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from test_serve import Server, job_done

#: What the configuration carries: a registry password (a wrong one: every copy fails
#: and says so), an API token and a proxy client token. Registered by the plugin (names).
REGISTRY_PASSWORD = "wrong-password-4f1e9c"
API_TOKEN = "api-token-for-the-secrets-scan-77d2"
CLIENT_TOKEN = "proxy-client-token-for-the-scan-09ab"


def test_the_scan_knows_the_suites_secrets_and_finds_them() -> None:
    """The plugin took this module's constants and the fixtures' logins; a secret in
    what a command says is found (and taken here, so this test passes)."""
    known = secrets.known()
    assert {REGISTRY_PASSWORD, API_TOKEN, CLIENT_TOKEN, "wonderland", "builder"} <= known
    assert base64.b64encode(b"alice:wonderland").decode() in known
    assert "ocimirror-test-secret-access-key" in known  # the S3 stand-in's
    said = run_ocimirror("copy", f"127.0.0.1:1/app:{API_TOKEN}!", "oci:/nowhere:1")
    assert said.returncode == 2
    found = secrets.take_found()
    assert [f.secret for f in found] == [API_TOKEN]
    assert "stderr" in found[0].where
    assert API_TOKEN not in str(found[0])  # the report masks it


def test_serve_says_no_secret_with_secrets_in_its_config(
    htpasswd_registry: LocalRegistry, tmp_path: Path
) -> None:
    """Logs at debug level, metrics, the dashboard, API answers, a job's errors and the
    `sync --json` summary: the registry password and the API token appear in none."""
    host = htpasswd_registry.host
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "logging: {level: debug}\n"
        f"registries:\n  '{host}':\n"
        f"    credentials: {{username: alice, password: '{REGISTRY_PASSWORD}'}}\n"
        "mirrors:\n"
        "  - name: app\n"
        f"    source: {host}/lib/app\n"
        f"    targets: [{host}/mirror/app]\n"
        "    schedule: 0\n"
    )
    server = Server(tmp_path, "-c", str(config), env={"OCIMIRROR_API_TOKENS": API_TOKEN})
    try:
        sync = server.call("POST", "/api/v1/mirrors/app/sync", b"{}", token=API_TOKEN)
        assert sync.status == 202, sync.body
        job = server.call("POST", "/api/v1/jobs", {"mirrors": [
            {"src": f"{host}/lib/app:1", "dst": f"{host}/copy/app:1"}
        ]}, token=API_TOKEN)  # fmt: skip
        assert job.status == 202, job.body
        done = job_done(server, job.json()["id"], API_TOKEN)
        assert done["state"] == "failed"
        answers = [
            server.call("GET", path, token=API_TOKEN)
            for path in ("/metrics", "/", "/api/v1/dashboard", "/api/v1/mirrors", "/api/v1/jobs")
        ]
        answers.append(server.call("GET", "/api/v1/jobs", token=API_TOKEN[:-1]))  # refused
    finally:
        server.stop()
    assert REGISTRY_PASSWORD not in json.dumps(done)
    for answer in answers:
        for secret in (REGISTRY_PASSWORD, API_TOKEN):
            assert secret.encode() not in answer.body
    log = server.text()
    assert "debug" in log
    assert REGISTRY_PASSWORD not in log
    assert API_TOKEN not in log
    out = run_ocimirror("sync", "-c", str(config), "--json")
    assert out.returncode != 0
    assert json.loads(out.stdout)  # the summary
    assert REGISTRY_PASSWORD not in out.stdout + out.stderr


def test_the_proxy_says_no_secret_with_secrets_in_its_settings(
    htpasswd_registry: LocalRegistry, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """AUTH_HEADER with a wrong password and a client token, at debug level: neither is
    in the log, the metrics or any answer (a refusal, a 403, a ping)."""
    auth = "Basic " + base64.b64encode(f"alice:{REGISTRY_PASSWORD}".encode()).decode()
    secrets.register(auth.split()[1])
    proxy = start_proxy(
        "--log-level", "debug", "--client-token", CLIENT_TOKEN,
        env={"REGISTRY_HOST": htpasswd_registry.host, "AUTH_HEADER": auth},
    )  # fmt: skip
    bearer = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    answers = [
        proxy.call("GET", "/v2/lib/app/manifests/1", headers=bearer),  # upstream refuses
        proxy.call("GET", "/v2/lib/app/manifests/1"),  # no client token
        proxy.call("GET", "/v2/", headers=bearer),
        proxy.call("GET", "/_token?scope=repository:lib/app:pull", headers=bearer),
        proxy.call("GET", "/metrics"),
    ]
    assert answers[0].status == 403
    assert answers[1].status == 401
    proxy.stop()
    text = proxy.text()
    for secret in (REGISTRY_PASSWORD, CLIENT_TOKEN, auth.split()[1]):
        assert all(secret.encode() not in a.body for a in answers)
        assert secret not in text
