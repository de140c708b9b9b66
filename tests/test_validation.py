"""Pure unit tests of web/validation.py: every bad input is a 400 (415 for the media type) that
names what is wrong, and good input becomes a pending pb.Job."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from actors.config import DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS
from proto.codec import pb
from web.errors import ApiError
from web.validation import (
    check_json_content_type,
    job_from_body,
    job_id_param,
    list_params,
    parse_json_object,
)


def submit(body: Any) -> pb.Job:
    """What POST /jobs does with a raw body."""
    return job_from_body(parse_json_object(json.dumps(body).encode()), "node-abc123")


def test_a_minimal_body_becomes_a_pending_job_with_the_default_timeout() -> None:
    job = submit({"command": "echo Hello World!"})

    assert job.command == "echo Hello World!"
    assert job.status == pb.JOB_PENDING
    assert job.timeout_seconds == DEFAULT_TIMEOUT_SECONDS
    assert job.created_by_node == "node-abc123"
    assert uuid.UUID(job.job_id).version == 4
    assert job.created_at.seconds > 0


def test_env_and_timeout_are_kept() -> None:
    job = submit({"command": "env", "env": {"PYTHONPATH": "/app", "DEBUG": "1"}, "timeout_seconds": 300})

    assert dict(job.env) == {"PYTHONPATH": "/app", "DEBUG": "1"}
    assert job.timeout_seconds == 300


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"not json", b'{"command": "x",}', b"\xff\xfe", b"NaN", b'{"command": "x", "t": Infinity}'],
)
def test_a_body_that_is_not_json_is_a_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        parse_json_object(raw)

    assert caught.value.status == 400
    assert caught.value.code == "malformed_json"


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    with pytest.raises(ApiError) as caught:
        parse_json_object(b"[" * 100_000)

    assert caught.value.status == 400


@pytest.mark.parametrize("body", [[], ["command"], "echo hi", 5, None, True])
def test_a_body_that_is_not_an_object_is_a_400(body: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_json_object(json.dumps(body).encode())

    assert caught.value.status == 400
    assert "object" in caught.value.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "true", "timeout_seconds": "5"}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": True}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": -1}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": 0}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": 1e12}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": 5.5}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": MAX_TIMEOUT_SECONDS + 1}, "timeout_seconds"),
        ({"command": "true", "timeout_seconds": None}, "timeout_seconds"),
        ({}, "command"),
        ({"command": ""}, "command"),
        ({"command": "   \n\t"}, "command"),
        ({"command": 5}, "command"),
        ({"command": ["echo", "hi"]}, "command"),
        ({"command": None}, "command"),
        ({"command": "echo \x00"}, "command"),
        ({"command": "true", "env": "DEBUG=1"}, "env"),
        ({"command": "true", "env": ["DEBUG"]}, "env"),
        ({"command": "true", "env": {"1ABC": "x"}}, "env"),
        ({"command": "true", "env": {"A-B": "x"}}, "env"),
        ({"command": "true", "env": {"A=B": "x"}}, "env"),
        ({"command": "true", "env": {"": "x"}}, "env"),
        ({"command": "true", "env": {"ÄB": "x"}}, "env"),
        ({"command": "true", "env": {"DEBUG": 1}}, "env"),
        ({"command": "true", "env": {"DEBUG": None}}, "env"),
        ({"command": "true", "env": {"DEBUG": True}}, "env"),
        ({"command": "true", "env": {"DEBUG": "a\x00b"}}, "env"),
        ({"command": "true", "env": {"DEBUG": "\ud800"}}, "env"),
        ({"command": "true", "timeout": 5}, "timeout"),
    ],
)
def test_a_bad_field_is_a_400_that_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        submit(body)

    assert caught.value.status == 400
    assert caught.value.body()["error"]["field"] == field
    assert field in caught.value.message


@pytest.mark.parametrize("timeout", [1, 300, MAX_TIMEOUT_SECONDS])
def test_every_timeout_inside_the_documented_bounds_is_accepted(timeout: int) -> None:
    assert submit({"command": "true", "timeout_seconds": timeout}).timeout_seconds == timeout


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ],
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    check_json_content_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        None,
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
def test_other_content_types_are_a_415(content_type: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        check_json_content_type(content_type)

    assert caught.value.status == 415


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, (50, None)),
        ({"limit": "10"}, (10, None)),
        ({"status": "job_running"}, (50, pb.JOB_RUNNING)),
        ({"limit": "1000", "status": "JOB_FAILED"}, (1000, pb.JOB_FAILED)),
    ],
)
def test_list_parameters_are_parsed(query: dict[str, str], expected: tuple[int, int | None]) -> None:
    assert list_params(query) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "9" * 30}, "limit"),
        ({"status": "DONE"}, "status"),
        ({"status": "JOB_STATUS_UNSPECIFIED"}, "status"),
    ],
)
def test_bad_list_parameters_are_a_400_that_names_the_parameter(query: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        list_params(query)

    assert caught.value.status == 400
    assert caught.value.body()["error"]["field"] == field


@pytest.mark.parametrize("job_id", ["nope", "123", "../etc/passwd", ""])
def test_a_job_id_that_is_not_a_uuid_is_a_404(job_id: str) -> None:
    with pytest.raises(ApiError) as caught:
        job_id_param(job_id)

    assert caught.value.status == 404


def test_a_key_given_twice_is_a_400_not_a_silent_last_one_wins() -> None:
    with pytest.raises(ApiError) as caught:
        parse_json_object(b'{"command": "echo a", "command": "rm -rf ~"}')
    assert (caught.value.status, caught.value.code) == (400, "malformed_json")
    assert "twice" in caught.value.message


def test_an_env_value_longer_than_the_kernel_takes_is_a_400_at_submit_time() -> None:
    with pytest.raises(ApiError) as caught:
        job_from_body({"command": "true", "env": {"BIG": "x" * 200_000}}, "node-a")
    assert (caught.value.status, caught.value.extra["field"]) == (400, "env")
