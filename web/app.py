"""The Bottle app: a thin adapter from HTTP to a Backend that asks the actors.

Runs on the WSGI server's worker threads. Every response is JSON; no client input reaches a 500.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, Protocol

import bottle

from actors.config import MAX_BODY_BYTES
from actors.logs import get_logger
from actors.messages import Refusal
from proto import codec
from proto.codec import pb
from web import openapi
from web.errors import ApiError, dumps
from web.validation import (
    check_json_content_type,
    flag_param,
    job_from_body,
    job_id_param,
    list_params,
    parse_json_object,
    pinned_node,
    wait_param,
)

PREFIX = "/api/v1"
_REFUSAL_STATUS = {"forbidden": 403, "not_found": 404, "conflict": 409, "unavailable": 503}


class Unavailable(Exception):
    """An actor did not answer in time (or has stopped): the API answers 503."""


class Backend(Protocol):
    """What the routes need from the node; implemented over actor asks in actors/api.py."""

    node_id: str

    def submit(self, job: pb.Job, pinned: str | None = None) -> pb.Job: ...
    def get_job(self, job_id: str, wait: float = 0.0) -> pb.JobRecord | None: ...
    def set_draining(self, draining: bool) -> str: ...
    def list_jobs(self, limit: int, status: int | None) -> list[pb.JobRecord]: ...
    def cancel(self, job_id: str) -> Any: ...
    def status(self) -> dict[str, Any]: ...
    def peers(self, include_all: bool) -> list[dict[str, Any]]: ...


def _respond(status: int, body: Any, **headers: str) -> bottle.HTTPResponse:
    response = bottle.HTTPResponse(dumps(body), status=status, **headers)
    response.content_type = "application/json"
    return response


def _error_page(error: bottle.HTTPError) -> str:
    """Bottle's own errors (404 no route, 405 wrong method) as JSON instead of its HTML page."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    status = error.status_code
    message = {404: "no such route", 405: "method not allowed"}.get(
        status, str(error.body or error.status_line)
    )
    bottle.response.content_type = "application/json"
    if status >= 500:
        get_logger().error("http_error", status=status, error=repr(error.exception))
        message = "internal error"
    return dumps({"error": {"code": codes.get(status, f"http_{status}"), "message": message}})


def _read_body() -> bytes:
    length = bottle.request.content_length
    if length > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"body must be at most {MAX_BODY_BYTES} bytes")
    stream = bottle.request.environ["wsgi.input"]
    try:
        raw = stream.read(length) if length >= 0 else stream.read(MAX_BODY_BYTES + 1)
    except ValueError as exc:  # cheroot: a malformed chunked body ("Bad chunked transfer size")
        raise ApiError(400, "malformed_body", f"the request body could not be read: {exc}") from None
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"body must be at most {MAX_BODY_BYTES} bytes")
    return raw


def _require_json() -> None:
    """A body-less state change takes JSON only too (empty or an object), so a form or a
    "simple" cross-site request from a browser page cannot drain a node."""
    check_json_content_type(bottle.request.content_type)
    raw = _read_body()
    if raw.strip() and parse_json_object(raw):
        raise ApiError(400, "invalid_body", "this route takes no fields: send no body or {}")


def _check_token(expected: str | None, path: str) -> None:
    """With an API token, every route but /health needs `Authorization: Bearer <token>` (401)."""
    if expected is None or path == PREFIX + "/health":
        return
    scheme, _, given = bottle.request.get_header("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "this node needs Authorization: Bearer <token>")


def make_app(backend: Backend, token: str | None = None) -> bottle.Bottle:
    """Build the WSGI app over `backend`; with `token`, every route but /health requires it."""
    app = bottle.Bottle(catchall=True)
    app.config["json.enable"] = False  # every route returns its own JSON response
    log = get_logger(node_id=backend.node_id, component="api")
    for status in (400, 404, 405, 413, 500):
        app.error_handler[status] = _error_page

    def route(path: str, method: str = "GET") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(handler)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                try:
                    _check_token(token, PREFIX + path)
                    return handler(*args, **kwargs)
                except ApiError as exc:
                    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
                    return _respond(exc.status, exc.body(), **headers)
                except Refusal as exc:
                    status = _REFUSAL_STATUS.get(exc.kind, 409)
                    return _respond(status, {"error": {"code": exc.code, "message": exc.message}})
                except Unavailable as exc:
                    return _respond(
                        503, {"error": {"code": "unavailable", "message": str(exc)}}, **{"Retry-After": "1"}
                    )
                except bottle.HTTPResponse:
                    raise
                except Exception:
                    log.exception("request_failed", path=bottle.request.path, method=bottle.request.method)
                    return _respond(500, {"error": {"code": "internal_error", "message": "internal error"}})

            app.route(PREFIX + path, method, guarded)
            return guarded

        return register

    @route("/health")
    def health() -> Any:
        return _respond(200, {"status": "ok", "node_id": backend.node_id})

    @route("/status")
    def status() -> Any:
        return _respond(200, backend.status())

    @route("/peers")
    def peers() -> Any:
        return _respond(200, backend.peers(flag_param(bottle.request.query, "all")))

    @route("/jobs", "POST")
    def submit() -> Any:
        check_json_content_type(bottle.request.content_type)
        body = parse_json_object(_read_body())
        job = job_from_body(body, backend.node_id)
        stored = backend.submit(job, pinned_node(body))
        return _respond(202, codec.submitted_json(stored), Location=f"{PREFIX}/jobs/{stored.job_id}")

    @route("/jobs")
    def list_jobs() -> Any:
        limit, status = list_params(bottle.request.query)
        return _respond(200, [codec.summary_json(r) for r in backend.list_jobs(limit, status)])

    @route("/jobs/<job_id>")
    def get_job(job_id: str) -> Any:
        record = backend.get_job(job_id_param(job_id), wait_param(bottle.request.query))
        if record is None:
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
        return _respond(200, codec.detail_json(record))

    @route("/jobs/<job_id>", "DELETE")
    def cancel(job_id: str) -> Any:
        outcome = backend.cancel(job_id_param(job_id))
        if not outcome.found:
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
        if outcome.already_final or outcome.record.job.status != pb.JOB_CANCELLED:
            name = codec.status_name(outcome.record.job.status)
            raise ApiError(409, "job_finished", f"job already finished with {name}", job_status=name)
        return _respond(200, codec.detail_json(outcome.record))

    @route("/drain", "POST")
    def drain() -> Any:
        _require_json()
        return _respond(200, {"node_id": backend.node_id, "status": backend.set_draining(True)})

    @route("/resume", "POST")
    def resume() -> Any:
        _require_json()
        return _respond(200, {"node_id": backend.node_id, "status": backend.set_draining(False)})

    @route("/openapi.json")
    def spec() -> Any:
        return _respond(200, openapi.document())

    return app
