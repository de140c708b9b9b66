"""Turn raw HTTP input into protobuf jobs and query values, or raise ApiError naming the field."""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

from actors.config import DEFAULT_LIST_LIMIT, DEFAULT_TIMEOUT_SECONDS, MAX_LIST_LIMIT, MAX_TIMEOUT_SECONDS
from proto.codec import JOB_STATUS_NAMES, pb, to_timestamp, utcnow
from proto.wire import NODE_ID
from web.errors import ApiError, bad_field

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Linux refuses a single exec argument of 128 KiB or more (MAX_ARG_STRLEN): say so up front.
MAX_COMMAND_BYTES = 128 * 1024 - 1
JOB_FIELDS = ("command", "env", "timeout_seconds", "target_node", "retries")
MAX_RETRIES = 10
MAX_WAIT_SECONDS = 300


def check_json_content_type(content_type: str | None) -> None:
    """Accept `application/json`, optionally with `charset=utf-8`; anything else is 415."""
    media, _, params = (content_type or "").partition(";")
    if media.strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_media_type", "only charset=utf-8 is accepted")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else (a key given twice included)."""
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates
        )
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "body is not UTF-8") from None
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # `[[[[…` a million deep fits in the body limit and exhausts the parser's recursion.
        raise ApiError(400, "malformed_json", "body is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", "body must be a JSON object")
    return value


def _command(body: dict[str, Any]) -> str:
    if "command" not in body:
        raise bad_field("command", "is required")
    command = body["command"]
    if not isinstance(command, str):
        raise bad_field("command", "must be a string")
    if not command.strip():
        raise bad_field("command", "must not be empty")
    if "\x00" in command:
        raise bad_field("command", "must not contain NUL characters")
    if len(command.encode("utf-8", errors="surrogatepass")) > MAX_COMMAND_BYTES:
        raise bad_field("command", f"must be at most {MAX_COMMAND_BYTES} bytes")
    return command


def _env(body: dict[str, Any]) -> dict[str, str]:
    env = body.get("env", {})
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise bad_field("env", "must be an object of string values")
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise bad_field("env", f"{name!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(value, str):
            raise bad_field("env", f"value of {name} must be a string")
        if "\x00" in value:
            raise bad_field("env", f"value of {name} must not contain NUL characters")
        if len(name.encode()) + 1 + len(value.encode("utf-8", errors="surrogatepass")) > MAX_COMMAND_BYTES:
            raise bad_field("env", f"{name}=... must be at most {MAX_COMMAND_BYTES} bytes (a kernel limit)")
    return env


def _integer(body: dict[str, Any], field: str, default: int, low: int, high: int, what: str) -> int:
    """An integer field within [low, high]; 300.0 counts (it is an integer to JSON Schema), true
    and "5" do not."""
    value = body.get(field, default)
    if isinstance(value, float) and value.is_integer() and low <= value <= high:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(field, f"must be an integer{what}")
    if not low <= value <= high:
        raise bad_field(field, f"must be between {low} and {high}")
    return value


def _timeout(body: dict[str, Any]) -> int:
    return _integer(
        body, "timeout_seconds", DEFAULT_TIMEOUT_SECONDS, 1, MAX_TIMEOUT_SECONDS, " number of seconds"
    )


def _check_surrogates(field: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_field(field, "contains an unpaired surrogate (\\ud800-\\udfff)") from None


def _retries(body: dict[str, Any]) -> int:
    return _integer(body, "retries", 0, 0, MAX_RETRIES, "")


def pinned_node(body: dict[str, Any]) -> str | None:
    """The `target_node` a job is pinned to, if any."""
    value = body.get("target_node")
    if value is None:
        return None
    if not isinstance(value, str) or not NODE_ID.fullmatch(value):
        raise bad_field("target_node", "must be a node id such as node-3fa9c1")
    return value


def wait_param(query: Any) -> float:
    """Seconds GET /jobs/<id>?wait=N may wait for a final status (0 = answer at once)."""
    raw = query.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_SECONDS:  # NaN fails this too
        raise bad_field("wait", f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS}")
    return seconds


def job_from_body(body: dict[str, Any], node_id: str) -> pb.Job:
    """A new PENDING pb.Job from a POST /jobs body (see pinned_node for `target_node`)."""
    unknown = sorted(set(body) - set(JOB_FIELDS))
    if unknown:
        raise bad_field(unknown[0], f"unknown field (allowed: {', '.join(JOB_FIELDS)})")
    command, env, timeout, retries = _command(body), _env(body), _timeout(body), _retries(body)
    pinned_node(body)
    _check_surrogates("command", command)
    for name, value in env.items():
        _check_surrogates("env", name + value)
    job = pb.Job(
        job_id=str(uuid.uuid4()),
        command=command,
        env=env,
        timeout_seconds=timeout,
        status=pb.JOB_PENDING,
        created_by_node=node_id,
        retries=retries,
        attempt=1,
    )
    job.created_at.CopyFrom(to_timestamp(utcnow()))
    return job


def flag_param(query: Any, name: str) -> bool:
    """A yes/no query parameter (`?all=true`); 400 for anything but true/false/1/0/yes/no."""
    raw = query.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise bad_field(name, "must be true or false")
    return value in ("true", "1", "yes")


def list_params(query: Any) -> tuple[int, int | None]:
    """(limit, status) from GET /jobs' query string."""
    raw_limit = query.get("limit")
    limit = DEFAULT_LIST_LIMIT
    if raw_limit is not None:
        if not re.fullmatch(r"\d{1,9}", raw_limit.strip()):
            raise bad_field("limit", f"must be an integer between 1 and {MAX_LIST_LIMIT}")
        limit = int(raw_limit)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad_field("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
    raw_status = query.get("status")
    status = None
    if raw_status is not None:
        name = raw_status.strip().upper()
        if name not in JOB_STATUS_NAMES:
            raise bad_field("status", f"must be one of {', '.join(JOB_STATUS_NAMES)}")
        status = pb.JobStatus.Value(name)
    return limit, status


def job_id_param(job_id: str) -> str:
    """A job id from the path: a UUID, else 404 (no job can have it)."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}") from None
