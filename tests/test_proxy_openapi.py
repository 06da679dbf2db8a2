"""`ocimirror proxy` fuzzed with schemathesis (issue 18): no crash, no 500, only clear errors.

The proxy has no OpenAPI document of its own (its API is the distribution spec's), so
this module writes a minimal one: every route it answers (the `/v2/` API, `/_token` with
its GET and OAuth2 POST forms, `/healthz`, `/metrics`, a browser's path) and the writes
it refuses (PUT, DELETE, POST of uploads), with their path, query, header and form
parameters as free strings, so that schemathesis sends anything (encoded slashes, dots,
NUL, overlong values) in every place. One proxy process with a directory cache, in front of
a registry holding `app:1`, answers them all; `not_a_server_error` is checked on every
answer, and `status_code_conformance` against the statuses the document lists.

The proxy's one 5xx by design, `502 UNAVAILABLE` when the upstream cannot be reached,
cannot happen here (the upstream is up), so any 5xx is a finding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from ocimirror.testkit.images import make_image
from ocimirror.testkit.proxy import ProxyProcess
from ocimirror.testkit.registry import LocalRegistry
from ocimirror.testkit.seeding import seed

#: Fuzzed cases per operation (the coverage phase's come on top); OCIMIRROR_SOAK=1: 500.
MAX_EXAMPLES = 500 if os.environ.get("OCIMIRROR_SOAK", "") not in ("", "0") else 10
APP = make_image(layer_size=200, seed="proxy-openapi")

_TEXT = {"type": "string"}
_ANSWERS = {
    code: {"description": what}
    for code, what in {
        "200": "the answer",
        "206": "part of a blob",
        "304": "not modified",
        "307": "a redirect (a blob's storage, a browser's page)",
        "400": "a refused name, reference, digest or query",
        "401": "credentials needed",
        "403": "refused",
        "404": "unknown",
        "405": "a write or an upload: never passed on",
        "406": "no manifest of an acceptable media type",
        "413": "a token form too large",
        "415": "a token form that is not urlencoded",
        "416": "a range outside the blob",
        "429": "too many requests",
    }.items()
}


def path_param(name: str) -> dict[str, Any]:
    """A required path parameter, any string."""
    return {"name": name, "in": "path", "required": True, "schema": _TEXT}


def query(*names: str) -> list[dict[str, Any]]:
    """Optional query parameters, any string."""
    return [{"name": n, "in": "query", "required": False, "schema": _TEXT} for n in names]


def header(*names: str) -> list[dict[str, Any]]:
    """Optional headers, any string."""
    return [{"name": n, "in": "header", "required": False, "schema": _TEXT} for n in names]


def operation(*params: dict[str, Any], body: bool = False) -> dict[str, Any]:
    """An operation with these parameters (and a form body) answering any of _ANSWERS."""
    op: dict[str, Any] = {"parameters": list(params), "responses": _ANSWERS}
    if body:
        form = {
            "type": "object",
            "properties": {
                k: _TEXT
                for k in ("grant_type", "scope", "service", "username", "password", "client_id")
            },
        }
        op["requestBody"] = {"content": {"application/x-www-form-urlencoded": {"schema": form}}}
    return op


def document() -> dict[str, Any]:
    """The proxy's surface as a minimal OpenAPI 3.0 document."""
    name, ref, digest = path_param("name"), path_param("reference"), path_param("digest")
    negotiation = header("Accept", "Range", "If-None-Match", "Authorization")
    read = operation(name, ref, *negotiation)
    blob = operation(name, digest, *negotiation)
    return {
        "openapi": "3.0.3",
        "info": {"title": "ocimirror proxy", "version": "1"},
        "paths": {
            "/v2/": {"get": operation(*header("Authorization"))},
            "/v2/{name}/manifests/{reference}": {
                "get": read,
                "head": read,
                "put": operation(name, ref, body=True),
                "delete": operation(name, ref),
            },
            "/v2/{name}/blobs/{digest}": {
                "get": blob,
                "head": blob,
                "delete": operation(name, digest),
            },
            "/v2/{name}/blobs/uploads/": {"post": operation(name, body=True)},
            "/v2/{name}/tags/list": {"get": operation(name, *query("n", "last", "ns"))},
            "/v2/{name}/referrers/{digest}": {
                "get": operation(name, digest, *query("artifactType"))
            },
            "/v2/_catalog": {"get": operation(*query("n", "last"))},
            "/_token": {
                "get": operation(*query("scope", "service", "account"), *header("Authorization")),
                "post": operation(*header("Authorization"), body=True),
            },
            "/_token/{name}": {"get": operation(name, *query("scope", "service"))},
            "/healthz": {"get": operation()},
            "/metrics": {"get": operation()},
            "/{page}": {"get": operation(path_param("page"))},
        },
    }


schema = schemathesis.openapi.from_dict(
    document(),
    config=schemathesis.Config.from_dict(
        {
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
            },
            "generation": {"max-examples": MAX_EXAMPLES},
            "request-timeout": 60,
        }
    ),
)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A proxy with a directory cache in front of a registry holding `app:1`."""
    import asyncio

    registry = LocalRegistry(tmp_path_factory.mktemp("openapi-registry")).start()
    started: ProxyProcess | None = None
    try:
        asyncio.run(seed(registry, "app", [("1", APP)]))
        workdir = tmp_path_factory.mktemp("openapi-proxy")
        started = ProxyProcess(
            workdir, "--registry-host", registry.host, "--cache", str(workdir / "cache")
        )
        yield started
        assert "Traceback" not in started.text()
    finally:
        if started is not None:
            started.stop()
        registry.stop()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_proxy_answers_anything_without_a_5xx(case: Case[Any], proxy: ProxyProcess) -> None:
    """Generated requests for one operation: never a 5xx, only the statuses listed."""
    case.call_and_validate(base_url=f"http://{proxy.host}")


def test_the_document_has_every_route_the_proxy_serves(proxy: ProxyProcess) -> None:
    """A known good request of each kind is answered as documented (so the generated ones
    reach the real routes): the manifest, a blob, the tags, the ping, the token."""
    accept = {"Accept": APP.manifest.media_type}
    assert proxy.call("GET", "/v2/app/manifests/1", headers=accept).status == 200
    assert proxy.call("GET", f"/v2/app/blobs/{APP.blobs[-1].digest}").status == 200
    assert proxy.call("GET", "/v2/app/tags/list").json()["tags"] == ["1"]
    assert proxy.call("GET", "/v2/").status == 200
    assert proxy.call("GET", "/_token?scope=repository:app:pull").status == 200
    assert proxy.call("PUT", "/v2/app/manifests/1").status == 405
