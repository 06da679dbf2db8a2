"""`ocimirror serve` against its own OpenAPI document, with schemathesis.

One real server process (module scope) with an API token and one configured mirror.
schemathesis generates requests for every documented operation (coverage and fuzzing
phases, valid and invalid data; stateful sequences along the links it infers) with
`Authorization: Bearer TOKEN`, and runs 13 of its 14 built-in checks on each answer: no
5xx, documented status codes, content types, headers and bodies, invalid data refused,
valid data accepted, auth enforced (ST401 and a missing Authorization header refused),
unsupported methods answered with 405 and an `Allow` header, and (stateful) a job just
created can be read. (`object_level_authorization` is on too, but with one token there is
no second identity to compare, so it has nothing to find here.)

One check is off, `use_after_free` (ST301): it expects a resource answered 2xx by DELETE
to be gone (404) afterwards. `DELETE /api/v1/jobs/{id}` cancels a job and keeps it
readable, in state `cancelled`, by design (the document says so; `test_serve` relies on
it), so the check fails whenever a stateful scenario cancels a job still running; that
happens when generated references parse (the copy then retries for seconds).

No operation is excluded. Generated `src`/`dst` strings may name arbitrary hosts: a
reference that parses costs the client's retries against a host that does not resolve
(4-6 s for a `POST /`, measured), one that does not parse fails at once. In practice
hypothesis's strings almost never parse, so `POST /` and `POST /api/v1/jobs` take about
2 s for some 235 cases each; see `MAX_EXAMPLES` for the bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import APIOperation, Case
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.result import Ok
from schemathesis.generation.stateful import APIStateMachine
from schemathesis.schemas import BaseSchema

from ocimirror.metrics import MirrorMetrics
from ocimirror.service.app import Service, make_app
from ocimirror.service.jobs import JobManager
from ocimirror.service.openapi import openapi_document
from ocimirror.state.db import StateDB
from test_serve import TOKEN, Server

#: Fuzzed cases per operation (the coverage phase's cases come on top), and stateful
#: scenarios. Should every fuzzed `POST /` name parseable references, this bounds its
#: worst case at 30 x ~6 s; a run that measured it saw none over 0.1 s.
MAX_EXAMPLES = 30
#: The configured mirror: on demand only, its hosts do not resolve.
MIRROR = "demo"
#: What aiohttp adds by itself: `add_get` also answers HEAD.
IMPLICIT_METHODS = frozenset({"HEAD"})
#: The HTTP methods an OpenAPI path item may hold operations for.
OPERATION_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `ocimirror serve` with a token and one on-demand mirror, for the whole module."""
    workdir = tmp_path_factory.mktemp("openapi")
    config = workdir / "mirror.yaml"
    config.write_text(
        "mirrors:\n"
        f"  - name: {MIRROR}\n"
        "    source: registry.invalid/lib/app\n"
        "    targets: [mirror.invalid/lib/app]\n"
        "    schedule: 0\n"
    )
    env = {"OCIMIRROR_API_TOKENS": TOKEN}
    server = Server(workdir, "--host", "127.0.0.1", "-c", str(config), env=env)
    try:
        yield server
        assert server.stop() == 0, server.text()  # it still shuts down cleanly
    finally:
        server.kill()


def base_url(server: Server) -> str:
    """Where `server` answers."""
    return f"http://127.0.0.1:{server.port}"


#: The header every request carries, so the guarded operations get past the 401.
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config() -> schemathesis.Config:
    """schemathesis settings: the token on every request, every check, bounded examples."""
    return schemathesis.Config.from_dict(
        {
            "headers": AUTH,
            # Every built-in check but `use_after_free`: see the module docstring.
            "checks": {"enabled": True, "use_after_free": {"enabled": False}},
            "generation": {"max-examples": MAX_EXAMPLES},
            "request-timeout": 60,
        }
    )


def document() -> dict[str, Any]:
    """The document as `/openapi.json` serves it (a JSON round trip of a fresh copy)."""
    doc: dict[str, Any] = json.loads(json.dumps(openapi_document(), default=str))
    return doc


# Loaded at import from the same builder the server answers `/openapi.json` with, so that
# each operation is a test item of its own; the requests go to the module's server, and
# `test_the_served_document_is_the_one_tested` checks the server serves this very document.
# (`schemathesis.pytest.from_fixture` could load it from the running server, but its lazy
# runner sets `Node._nodeid`, which pytest 9.2 no longer has.)
schema = schemathesis.openapi.from_dict(document(), config=config())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_openapi_document(case: Case[Any], server: Server) -> None:
    """Generated requests for one operation; every built-in check on every answer."""
    case.call_and_validate(base_url=base_url(server))


def test_every_built_in_check_runs_but_use_after_free() -> None:
    """The generated tests run what the module docstring says, at least the four basics."""
    load_all_checks()
    names = {check.__name__ for check in CHECKS.get_all() if not isinstance(check, type)}
    checks = schema.config.checks_config_for(operation=schema["/"]["POST"], phase=None)
    enabled = {name for name in names if checks.get_by_name(name=name).enabled}
    assert enabled == names - {"use_after_free"}
    basics = {
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    }
    assert basics <= enabled


# --------------------------------------------------------------------------- the document


@pytest.fixture(scope="module")
def served_schema(server: Server) -> BaseSchema:
    """The running server's `/openapi.json`, loaded by schemathesis."""
    return schemathesis.openapi.from_url(f"{base_url(server)}/openapi.json", config=config())


def test_the_served_document_is_the_one_tested(served_schema: BaseSchema) -> None:
    """What the server answers at `/openapi.json` is what the generated tests ran on."""
    assert served_schema.raw_schema == document()


def test_openapi_json_is_a_valid_openapi_3_1_document(served_schema: BaseSchema) -> None:
    """It validates against the OpenAPI 3.1 meta-schema, and every operation loads."""
    assert served_schema.raw_schema["openapi"].startswith("3.1.")
    served_schema.validate()
    # (Loaded from its URL, schemathesis leaves out the operation serving the document.)
    results = list(schema.get_all_operations())
    operations: list[APIOperation[Any, Any, Any, Any]] = [
        result.ok() for result in results if isinstance(result, Ok)
    ]
    assert len(operations) == len(results)
    labels = {operation.label for operation in operations}
    assert labels == {f"{method} {path}" for method, path in documented_routes(schema)}


def documented_routes(api: BaseSchema) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {
        (method.upper(), path)
        for path, item in api.raw_schema["paths"].items()
        for method in item
        if method in OPERATION_METHODS
    }


def served_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route `make_app` registers (the app is built, not run)."""
    state = StateDB("sqlite:///never-opened.db")
    app = make_app(Service(state=state, jobs=JobManager(state), metrics=MirrorMetrics()))
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in IMPLICIT_METHODS
    }


def test_the_document_lists_every_route_the_app_serves(served_schema: BaseSchema) -> None:
    """The route table and the document agree exactly (but for the HEAD of each GET)."""
    assert documented_routes(served_schema) == served_routes()


def test_every_documented_operation_is_routed(server: Server, served_schema: BaseSchema) -> None:
    """The running server has a handler for each documented method and path."""
    for method, path in sorted(documented_routes(served_schema)):
        concrete = path.replace("{id}", "no-such-job").replace("{name}", "no-such-mirror")
        body = b"{}" if method == "POST" else None
        answer = server.call(method, concrete, body, token=TOKEN)
        assert answer.status != 405, (method, path)
        if concrete == path:
            assert answer.status != 404, (method, path)
        else:
            # The handler's own 404 is a JSON error; the router's is plain text.
            assert answer.status == 404, (method, path, answer.status)
            assert answer.headers["Content-Type"].startswith("application/json"), (method, path)


# --------------------------------------------------------------------------- explicit cases


def call(api: BaseSchema, method: str, path: str, **parts: Any) -> int:
    """Send one hand-made case of a documented operation, check the answer, return its status.

    (The configured headers only go with generated cases; these carry the token themselves.)
    """
    response = api[path][method].Case(**parts).call_and_validate(headers=AUTH)
    status: int = response.status_code
    return status


def test_syncing_the_configured_mirror_conforms(served_schema: BaseSchema) -> None:
    """Generated names only ever reach the 404 of the sync operation; this is the real one."""
    sync = "/api/v1/mirrors/{name}/sync"
    # A write is sent as application/json (415 otherwise), even with nothing to say.
    parts: dict[str, Any] = {
        "path_parameters": {"name": MIRROR},
        "body": {},
        "media_type": "application/json",
    }
    assert call(served_schema, "POST", sync, **parts) in (202, 409)
    assert call(served_schema, "POST", sync, **parts) in (202, 409)
    assert call(served_schema, "GET", "/api/v1/mirrors") == 200
    assert call(served_schema, "GET", "/api/v1/dashboard") == 200


def test_a_job_that_exists_conforms(served_schema: BaseSchema) -> None:
    """Generated ids only ever reach the 404s of the job operations; this job exists."""
    body: dict[str, Any] = {
        "mirrors": [{"src": "registry.invalid/lib/app:1", "dst": "mirror.invalid/x:1"}]
    }
    create = served_schema["/api/v1/jobs"]["POST"]
    accepted = create.Case(body=body).call_and_validate(headers=AUTH)
    assert accepted.status_code == 202
    job = {"id": accepted.json()["id"]}
    one = "/api/v1/jobs/{id}"
    assert call(served_schema, "GET", one, path_parameters=job) == 200
    assert call(served_schema, "GET", "/api/v1/jobs", query={"limit": 5}) == 200
    assert call(served_schema, "DELETE", one, path_parameters=job) in (202, 409)
    assert call(served_schema, "DELETE", one, path_parameters=job) == 409
    assert call(served_schema, "GET", one, path_parameters=job) == 200


# --------------------------------------------------------------------------- stateful


def test_stateful_scenarios_conform(server: Server) -> None:
    """Sequences along the document's (inferred) links: create a job, then read or cancel it."""
    url = base_url(server)

    def get_call_kwargs(_self: APIStateMachine, _case: Case[Any]) -> dict[str, Any]:
        """Send every step to the module's server, with the token."""
        return {"base_url": url, "headers": AUTH}

    machine = cast(
        type[APIStateMachine],
        type("Machine", (schema.as_state_machine(),), {"get_call_kwargs": get_call_kwargs}),
    )
    machine.run(
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
