"""The OpenAPI 3.1 document of `ocimirror serve`, built from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from .. import __version__
from .models import (
    ApiError,
    JobAccepted,
    JobView,
    MirrorRequest,
    MirrorResponse,
    MirrorView,
)

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("ApiError"), description)


_UNAUTHORIZED = _error("A valid API token is required (when tokens are configured)")
_FORBIDDEN = _error("The request's Host or Origin is not this service's")
_NOT_JSON = _error("The body is not sent as application/json")
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
#: Open to anyone from anywhere: no token, no Host or Origin check.
_OPEN = frozenset({"/healthz", "/readyz"})


def _guarded(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every operation but health and readiness: a token (401) and a Host and Origin (403)."""
    for path, item in paths.items():
        if path in _OPEN:
            continue
        for operation in item.values():
            operation.setdefault("security", _BEARER)
            operation["responses"].setdefault("401", _UNAUTHORIZED)
            operation["responses"].setdefault("403", _FORBIDDEN)
    return paths


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document (computed once)."""
    _, schemas = models_json_schema(
        [
            (MirrorRequest, "validation"),
            (MirrorResponse, "serialization"),
            (JobAccepted, "serialization"),
            (JobView, "serialization"),
            (MirrorView, "serialization"),
            (ApiError, "serialization"),
        ],
        ref_template=_REF,
    )
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    mirror_body = {
        "required": True,
        "content": {"application/json": {"schema": _ref("MirrorRequest")}},
    }
    text_error = {
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "ocimirror",
            "version": __version__,
            "description": "Mirror container images between registries, as a service.",
        },
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/": {
                "post": {
                    "summary": "Copy images and answer when done (Cloud Run Docker Mirror)",
                    "operationId": "mirror",
                    "security": _BEARER,
                    "requestBody": mirror_body,
                    "responses": {
                        "200": _json(_ref("MirrorResponse"), "Done: ok, or the errors"),
                        "400": {"description": "The body is not a valid request", **text_error},
                        "401": _UNAUTHORIZED,
                        "413": {
                            "description": "The body is over 1 MB, or has too many entries",
                            **text_error,
                        },
                        "415": {
                            "description": "Not application/json, from a caller nobody"
                            " authenticated (no tokens, no --allow-unauthenticated)",
                            **text_error,
                        },
                    },
                },
                "get": {
                    "summary": "The dashboard",
                    "operationId": "dashboard",
                    "responses": {
                        "200": {
                            "description": "An HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                },
            },
            "/api/v1/jobs": {
                "post": {
                    "summary": "Start copying; answer at once with the job",
                    "operationId": "createJob",
                    "security": _BEARER,
                    "requestBody": mirror_body,
                    "responses": {
                        "202": _json(_ref("JobAccepted"), "Started (or joined a running job)"),
                        "400": _error("The body is not a valid request"),
                        "401": _UNAUTHORIZED,
                        "413": _error("The body is over 1 MB, or has too many entries"),
                        "415": _NOT_JSON,
                    },
                },
                "get": {
                    "summary": "Recent jobs, newest first",
                    "operationId": "listJobs",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"jobs": {"type": "array", "items": _ref("JobView")}},
                                "required": ["jobs"],
                            },
                            "The jobs",
                        ),
                        "400": _error("A bad limit"),
                        "401": _UNAUTHORIZED,
                    },
                },
            },
            "/api/v1/jobs/{id}": {
                "get": {
                    "summary": "A job: state, progress, results and errors",
                    "operationId": "getJob",
                    "security": _BEARER,
                    "parameters": [job_id],
                    "responses": {
                        "200": _json(_ref("JobView"), "The job"),
                        "401": _UNAUTHORIZED,
                        "404": _error("No such job"),
                    },
                },
                "delete": {
                    "summary": "Cancel a job",
                    "description": "Stops a queued or running job. The job is not removed:"
                    " it stays readable, in state `cancelled`.",
                    "operationId": "cancelJob",
                    "security": _BEARER,
                    "parameters": [job_id],
                    "responses": {
                        "202": _json(_ref("JobView"), "Cancelled"),
                        "401": _UNAUTHORIZED,
                        "404": _error("No such job"),
                        "409": _error("The job is not running"),
                    },
                },
            },
            "/api/v1/mirrors": {
                "get": {
                    "summary": "The configured mirrors: last run, result, next run",
                    "operationId": "listMirrors",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "mirrors": {"type": "array", "items": _ref("MirrorView")}
                                },
                                "required": ["mirrors"],
                            },
                            "The mirrors",
                        )
                    },
                }
            },
            "/api/v1/dashboard": {
                "get": {
                    "summary": "What the dashboard polls: the mirrors and the recent jobs",
                    "operationId": "dashboardData",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "mirrors": {"type": "array", "items": _ref("MirrorView")},
                                    "jobs": {"type": "array", "items": _ref("JobView")},
                                },
                                "required": ["mirrors", "jobs"],
                            },
                            "The mirrors and up to 20 jobs, newest first",
                        )
                    },
                }
            },
            "/api/v1/mirrors/{name}/sync": {
                "post": {
                    "summary": "Run a configured mirror now",
                    "operationId": "syncMirror",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "description": "A JSON object, `{}` (its members are ignored): a"
                        " write is application/json, which a browser cannot send"
                        " cross-origin unasked.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "202": _json({"type": "object"}, "Started"),
                        "400": _error("The body is not a JSON object"),
                        "401": _UNAUTHORIZED,
                        "415": _NOT_JSON,
                        "404": _error("No such mirror"),
                        "409": _error("Already running"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "healthz",
                    "responses": {"200": _json({"type": "object"}, "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json({"type": "object"}, "Ready"),
                        "503": _json({"type": "object"}, "Not ready"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "The text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
    _guarded(document["paths"])
    return document
