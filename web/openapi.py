"""The OpenAPI 3 document served at /api/v1/openapi.json. A test keeps it in step with the routes."""

from __future__ import annotations

from typing import Any

from actors.config import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_BODY_BYTES,
    MAX_LIST_LIMIT,
    MAX_TIMEOUT_SECONDS,
    VERSION,
)
from proto.codec import JOB_STATUS_NAMES
from web.validation import MAX_COMMAND_BYTES, MAX_RETRIES, MAX_WAIT_SECONDS

_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "the request field at fault (400)"},
                    "job_status": {
                        "$ref": "#/components/schemas/JobStatus",
                        "description": "the final status (409)",
                    },
                },
            }
        },
    },
    "JobStatus": {"type": "string", "enum": list(JOB_STATUS_NAMES)},
    "NewJob": {
        "type": "object",
        "required": ["command"],
        "additionalProperties": False,
        "properties": {
            "command": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_COMMAND_BYTES,
                "pattern": "^[^\\x00]*\\S[^\\x00]*$",
                "description": "run as /bin/sh -c COMMAND; must not be blank or contain NUL",
            },
            "env": {
                "type": "object",
                "description": "overlaid on the node's environment; names match [A-Za-z_][A-Za-z0-9_]*",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "additionalProperties": {"type": "string", "pattern": "^[^\\x00]*$"},
            },
            "timeout_seconds": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TIMEOUT_SECONDS,
                "default": DEFAULT_TIMEOUT_SECONDS,
            },
            "target_node": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                "description": "pin the job to this node (this node's own id allowed); 404 if unknown, "
                "409 if not live or draining",
            },
            "retries": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_RETRIES,
                "default": 0,
                "description": "times the job may be routed again if its executor is lost after it started",
            },
        },
    },
    "Submitted": {
        "type": "object",
        "required": ["job_id", "target_node", "command", "status", "created_at"],
        "properties": {
            "job_id": {"type": "string", "format": "uuid"},
            "target_node": {"type": "string"},
            "command": {"type": "string"},
            "status": _ref("JobStatus"),
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "JobSummary": {
        "type": "object",
        "properties": {
            "job_id": {"type": "string", "format": "uuid"},
            "command": {"type": "string"},
            "status": _ref("JobStatus"),
            "target_node": {"type": "string"},
            "created_by_node": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _TIME,
            "finished_at": _TIME,
            "duration_seconds": {"type": ["number", "null"]},
        },
    },
    "Job": {
        "allOf": [
            _ref("JobSummary"),
            {
                "type": "object",
                "properties": {
                    "env": {
                        "type": "object",
                        "description": "names of the job's variables; values are masked as ***",
                        "additionalProperties": {"type": "string"},
                    },
                    "timeout_seconds": {"type": "integer"},
                    "executor_node": {"type": ["string", "null"]},
                    "stdout": {"type": "string", "description": "UTF-8, invalid bytes replaced"},
                    "stderr": {"type": "string"},
                    "stdout_truncated": {"type": "boolean"},
                    "stderr_truncated": {"type": "boolean"},
                    "error": {"type": ["string", "null"]},
                    "attempt": {"type": "integer", "description": "1 for the first dispatch"},
                    "retries": {"type": "integer"},
                    "notes": {"type": ["string", "null"], "description": "late results and similar facts"},
                },
            },
        ]
    },
    "Status": {
        "type": "object",
        "required": [
            "node_id",
            "status",
            "version",
            "uptime_seconds",
            "running",
            "queued",
            "capacity",
            "jobs",
        ],
        "properties": {
            "node_id": {"type": "string"},
            "status": {"type": "string", "enum": ["IDLE", "BUSY", "DRAINING"]},
            "version": {"type": "string"},
            "uptime_seconds": {"type": "number"},
            "running": {"type": "integer"},
            "queued": {"type": "integer"},
            "capacity": {"type": "integer"},
            "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "DrainState": {
        "type": "object",
        "properties": {
            "node_id": {"type": "string"},
            "status": {"type": "string", "enum": ["IDLE", "BUSY", "DRAINING"]},
        },
    },
    "Peer": {
        "type": "object",
        "properties": {
            "node_id": {"type": "string"},
            "address": {"type": "string", "description": "host:mesh_port"},
            "api_url": {"type": ["string", "null"]},
            "status": {
                "type": "string",
                "enum": ["IDLE", "BUSY", "DRAINING", "UNCONFIRMED", "FAILED", "LEFT"],
            },
            "last_heartbeat": {"type": "string", "format": "date-time"},
            "last_seen_seconds_ago": {"type": "number"},
            "running": {"type": "integer"},
            "queued": {"type": "integer"},
            "capacity": {"type": "integer"},
            "version": {"type": "string"},
            "incarnation": {"type": "integer"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}

_UNAVAILABLE = _error("an actor of the node did not answer in time; retry")
_STATE_CHANGE = {
    "requestBody": {
        "required": True,
        "description": "{} (or no body at all); Content-Type must be application/json either way, so "
        "that no form or simple cross-site request can change a node",
        "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
    }
}
_STATE_ERRORS = {
    "400": _error("a body that is not a JSON object"),
    "413": _error("body too large"),
    "415": _error("Content-Type is not application/json"),
    "503": _UNAVAILABLE,
}


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    doc = _document()
    for path, operations in doc["paths"].items():
        if path != "/api/v1/health":
            for operation in operations.values():
                operation["responses"]["401"] = _error("no or a wrong bearer token (nodes with an API token)")
    return doc


def _document() -> dict[str, Any]:
    json_body = {"application/json": {"schema": _ref("NewJob")}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "worker-mesh node API", "version": VERSION},
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/health": {
                "get": {
                    "summary": "liveness",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"status": {"const": "ok"}, "node_id": {"type": "string"}},
                            },
                            "the node is up",
                        )
                    },
                }
            },
            "/api/v1/status": {
                "get": {
                    "summary": "this node's state, load and job counts",
                    "responses": {"200": _json(_ref("Status"), "status"), "503": _UNAVAILABLE},
                }
            },
            "/api/v1/peers": {
                "get": {
                    "summary": "live peers (all known peers with ?all=true)",
                    "parameters": [{"name": "all", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("Peer")}, "peers"),
                        "400": _error("?all is not true or false"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/v1/jobs": {
                "post": {
                    "summary": "submit a shell job",
                    "requestBody": {
                        "required": True,
                        "description": f"JSON object, at most {MAX_BODY_BYTES} bytes",
                        "content": json_body,
                    },
                    "responses": {
                        "202": {
                            **_json(_ref("Submitted"), "accepted and committed; runs soon"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "400": _error(
                            "malformed JSON, not an object, or a field is invalid (named in error.field)"
                        ),
                        "413": _error(f"body larger than {MAX_BODY_BYTES} bytes"),
                        "403": _error("the command is not allowed here (--allow-commands)"),
                        "404": _error("target_node is not a node this node knows"),
                        "409": _error(
                            "target_node is not live or is draining; or this node is draining "
                            "and no live peer can take the job"
                        ),
                        "415": _error("Content-Type is not application/json (charset=utf-8 allowed)"),
                        "503": _UNAVAILABLE,
                    },
                },
                "get": {
                    "summary": "jobs, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIST_LIMIT,
                                "default": DEFAULT_LIST_LIMIT,
                            },
                        },
                        {"name": "status", "in": "query", "schema": _ref("JobStatus")},
                    ],
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("JobSummary")}, "jobs"),
                        "400": _error("bad limit or status"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "summary": "one job with its output; ?wait=N waits up to N s for a final status",
                    "parameters": [
                        _JOB_ID,
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Job"), "the job (still not final if the wait ran out)"),
                        "400": _error("bad wait"),
                        "404": _error("no such job"),
                        "503": _UNAVAILABLE,
                    },
                },
                "delete": {
                    "summary": "cancel a pending or running job (its process group is killed)",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json(_ref("Job"), "cancelled"),
                        "404": _error("no such job"),
                        "409": _error("the job had already finished"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/api/v1/drain": {
                "post": {
                    "summary": "stop taking jobs: peers stop sending work here, running jobs finish",
                    **_STATE_CHANGE,
                    "responses": {"200": _json(_ref("DrainState"), "now DRAINING"), **_STATE_ERRORS},
                }
            },
            "/api/v1/resume": {
                "post": {
                    "summary": "take jobs again after a drain",
                    **_STATE_CHANGE,
                    "responses": {"200": _json(_ref("DrainState"), "IDLE or BUSY again"), **_STATE_ERRORS},
                }
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required on every route but /health when the node has an API token "
                    "(--api-token-file or MESH_API_TOKEN); a missing or wrong one is 401",
                }
            },
        },
        "security": [{}, {"bearer": []}],
    }
