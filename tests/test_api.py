"""A whole node in-process, over real HTTP on 127.0.0.1: the seed's curl examples and every error.

Every response goes through `Api.call`, which records the status each route gave; the OpenAPI test
at the end of this module checks that the document lists every one of them.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from actors.config import MAX_BODY_BYTES
from actors.node import Node
from tests.helpers import group_is_gone, wait_for

JSON = {"Content-Type": "application/json"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
FINAL = {"JOB_COMPLETED", "JOB_FAILED", "JOB_TIMEOUT", "JOB_CANCELLED"}

# (OpenAPI path, lower-case method) → every status the tests saw it answer.
OBSERVED: defaultdict[tuple[str, str], set[int]] = defaultdict(set)


def openapi_path(path: str) -> str:
    path = path.split("?", 1)[0]
    return re.sub(r"^/api/v1/jobs/[^/]+$", "/api/v1/jobs/{job_id}", path)


class Api:
    """requests against one node, every response recorded in OBSERVED."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.base = f"http://127.0.0.1:{node.api_port}"
        self.session = requests.Session()

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        response = self.session.request(method, self.base + path, **kwargs)
        OBSERVED[(openapi_path(path), method.lower())].add(response.status_code)
        return response

    def submit(self, command: str, **fields: Any) -> str:
        response = self.call("POST", "/api/v1/jobs", json={"command": command, **fields})
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 10) -> dict[str, Any]:
        """The job once its status is one of `statuses` (default: any final status)."""
        wanted = set(statuses) or FINAL
        return wait_for(
            lambda: (job := self.job(job_id))["status"] in wanted and job, timeout, what=f"{job_id} {wanted}"
        )


@pytest.fixture
def api(node_factory: Callable[..., Node]) -> Iterator[Api]:
    client = Api(node_factory(max_jobs=2))
    yield client
    client.session.close()


@pytest.fixture
def one_slot_api(node_factory: Callable[..., Node]) -> Iterator[Api]:
    client = Api(node_factory(max_jobs=1))
    yield client
    client.session.close()


def assert_json_error(response: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with a JSON error body (never HTML); returns the error object."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code
    return error


# --- the seed's curl examples -------------------------------------------------------------------


def test_the_hello_world_example_is_accepted_committed_and_run(api: Api) -> None:
    response = api.call("POST", "/api/v1/jobs", data='{"command": "echo Hello World!"}', headers=JSON)

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"job_id", "target_node", "command", "status", "created_at"}
    assert uuid.UUID(body["job_id"]).version == 4
    assert response.headers["Location"] == f"/api/v1/jobs/{body['job_id']}"
    assert body["target_node"] == api.node.node_id
    assert body["command"] == "echo Hello World!"
    assert body["status"] == "JOB_PENDING"
    assert RFC3339_UTC.match(body["created_at"])
    with sqlite3.connect(api.node.data_dir.db_path) as db:  # committed before the 202 went out
        assert db.execute("SELECT command FROM jobs WHERE job_id = ?", (body["job_id"],)).fetchall()
    db.close()

    job = api.wait_status(body["job_id"])
    assert job["status"] == "JOB_COMPLETED"
    assert job["stdout"] == "Hello World!\n"
    assert job["exit_code"] == 0
    assert job["executor_node"] == api.node.node_id


def test_the_env_example_prints_debug_and_masks_the_values(api: Api) -> None:
    job_id = api.submit(
        'python3 -c "import os;print(os.environ[\\"DEBUG\\"])"',
        env={"PYTHONPATH": "/app", "DEBUG": "1"},
        timeout_seconds=300,
    )

    job = api.wait_status(job_id)

    assert job["status"] == "JOB_COMPLETED", job
    assert job["stdout"] == "1\n"
    assert job["env"] == {"DEBUG": "***", "PYTHONPATH": "***"}
    assert job["timeout_seconds"] == 300


def test_jobs_are_listed_newest_first_up_to_the_limit(api: Api) -> None:
    ids = [api.submit(f"echo {n}") for n in range(3)]
    for job_id in ids:
        api.wait_status(job_id)

    listed = api.call("GET", "/api/v1/jobs?limit=2")
    everything = api.call("GET", "/api/v1/jobs")
    completed = api.call("GET", "/api/v1/jobs?status=JOB_COMPLETED&limit=10")

    assert listed.status_code == 200
    assert [job["job_id"] for job in listed.json()] == ids[:0:-1]
    assert [job["job_id"] for job in everything.json()] == ids[::-1]
    assert {job["job_id"] for job in completed.json()} == set(ids)
    assert set(listed.json()[0]) == {
        "job_id", "command", "status", "target_node", "created_by_node", "exit_code",
        "created_at", "started_at", "finished_at", "duration_seconds",
    }  # fmt: skip
    assert listed.json()[0]["duration_seconds"] >= 0


def test_status_shows_the_node_its_load_and_job_counts(api: Api) -> None:
    api.wait_status(api.submit("true"))

    response = api.call("GET", "/api/v1/status")

    assert response.status_code == 200
    status = response.json()
    assert status["node_id"] == api.node.node_id
    assert status["status"] == "IDLE"
    assert (status["running"], status["queued"], status["capacity"]) == (0, 0, 2)
    assert status["version"]
    assert status["uptime_seconds"] >= 0
    assert status["jobs"]["JOB_COMPLETED"] == 1
    assert set(status["jobs"]) == {"JOB_PENDING", "JOB_RUNNING", *FINAL}


def test_health_says_ok_with_the_node_id(api: Api) -> None:
    response = api.call("GET", "/api/v1/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "node_id": api.node.node_id}


def test_peers_is_a_json_list(api: Api) -> None:
    response = api.call("GET", "/api/v1/peers")

    assert response.status_code == 200
    assert isinstance(response.json(), list)


# --- jobs end to end -----------------------------------------------------------------------------


def test_a_failing_job_shows_its_output_exit_code_and_reason(api: Api) -> None:
    job = api.wait_status(api.submit("echo out; echo err >&2; exit 3"))

    assert job["status"] == "JOB_FAILED"
    assert (job["stdout"], job["stderr"]) == ("out\n", "err\n")
    assert job["exit_code"] == 3
    assert job["error"]
    assert job["stdout_truncated"] is False
    assert job["started_at"] <= job["finished_at"]


def test_output_that_is_not_utf8_is_shown_with_replacement_characters(api: Api) -> None:
    job = api.wait_status(api.submit(r"printf 'ok\377\376!'"))

    assert job["stdout"] == "ok\ufffd\ufffd!"


def test_a_job_that_runs_too_long_times_out(api: Api) -> None:
    job = api.wait_status(api.submit("sleep 300", timeout_seconds=1), timeout=1 + 0.5 + 3)

    assert job["status"] == "JOB_TIMEOUT"
    assert "timed out" in job["error"]


def test_a_running_job_can_be_cancelled_once_and_its_processes_die(api: Api) -> None:
    job_id = api.submit("echo $$ > pgid-cancel; sleep 300 & sleep 300")
    api.wait_status(job_id, "JOB_RUNNING")
    pgid_file = api.node.data_dir.work_dir / "pgid-cancel"
    pgid = int(wait_for(lambda: pgid_file.exists() and pgid_file.read_text().strip(), what="the pgid"))

    first = api.call("DELETE", f"/api/v1/jobs/{job_id}")
    second = api.call("DELETE", f"/api/v1/jobs/{job_id}")

    assert first.status_code == 200
    assert first.json()["status"] == "JOB_CANCELLED"
    error = assert_json_error(second, 409, "job_finished")
    assert error["job_status"] == "JOB_CANCELLED"
    wait_for(lambda: group_is_gone(pgid), timeout=3, what="the job's process group to go")
    assert api.job(job_id)["status"] == "JOB_CANCELLED"


def test_a_pending_job_can_be_cancelled_and_never_runs(one_slot_api: Api) -> None:
    api = one_slot_api
    blocker = api.submit("sleep 300")
    api.wait_status(blocker, "JOB_RUNNING")
    waiting = api.submit("echo ran > ran-marker")
    assert api.job(waiting)["status"] == "JOB_PENDING"

    cancelled = api.call("DELETE", f"/api/v1/jobs/{waiting}")
    api.call("DELETE", f"/api/v1/jobs/{blocker}")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "JOB_CANCELLED"
    wait_for(lambda: api.call("GET", "/api/v1/status").json()["running"] == 0, what="the node to idle")
    assert api.job(waiting)["started_at"] is None
    assert not (api.node.data_dir.work_dir / "ran-marker").exists()


def test_cancelling_a_finished_job_is_a_409(api: Api) -> None:
    job_id = api.submit("true")
    api.wait_status(job_id)

    assert_json_error(api.call("DELETE", f"/api/v1/jobs/{job_id}"), 409, "job_finished")


def test_the_node_is_busy_while_every_slot_is_taken_and_extra_jobs_wait(one_slot_api: Api) -> None:
    api = one_slot_api
    running, queued = api.submit("sleep 300"), api.submit("sleep 300")
    api.wait_status(running, "JOB_RUNNING")

    status = api.call("GET", "/api/v1/status").json()

    assert (status["status"], status["running"], status["queued"]) == ("BUSY", 1, 1)
    assert api.job(queued)["status"] == "JOB_PENDING"
    api.call("DELETE", f"/api/v1/jobs/{running}")
    api.wait_status(queued, "JOB_RUNNING")
    api.call("DELETE", f"/api/v1/jobs/{queued}")
    idle = wait_for(lambda: (s := api.call("GET", "/api/v1/status").json())["running"] == 0 and s)
    assert idle["status"] == "IDLE"


# --- errors: always JSON, never a 500 ------------------------------------------------------------


# Each error test below runs its whole table against one node (a subtest per row): a node stop
# costs half a second, a request a millisecond.


def test_an_unknown_job_is_a_404(api: Api, subtests: pytest.Subtests) -> None:
    for method in ("GET", "DELETE"):
        for job_id in (str(uuid.uuid4()), "not-a-uuid", "12345"):
            with subtests.test(method=method, job_id=job_id):
                assert_json_error(api.call(method, f"/api/v1/jobs/{job_id}"), 404, "job_not_found")


def test_an_unknown_route_is_a_json_404(api: Api, subtests: pytest.Subtests) -> None:
    for path in ("/", "/api/v1", "/api/v1/nope", "/api/v2/health", "/api/v1/jobs/a/b", "/api/v1/health/"):
        with subtests.test(path=path):
            assert_json_error(api.call("GET", path), 404)


def test_a_wrong_method_is_a_json_405(api: Api, subtests: pytest.Subtests) -> None:
    wrong = [("PUT", "/api/v1/health"), ("POST", "/api/v1/status"), ("DELETE", "/api/v1/jobs"),
             ("PATCH", "/api/v1/jobs/" + str(uuid.uuid4())), ("POST", "/api/v1/openapi.json")]  # fmt: skip
    for method, path in wrong:
        with subtests.test(method=method, path=path):
            response = assert_json_error(api.call(method, path), 405)
            assert response["code"] == "method_not_allowed"


BAD_BODIES = [
    (b"{", "malformed_json", None),
    (b"", "malformed_json", None),
    (b"[" * 100_000, "malformed_json", None),
    (b"\xff\xfe{}", "malformed_json", None),
    (b'["echo hi"]', "invalid_body", None),
    (b'"echo hi"', "invalid_body", None),
    (b'{"command": "true", "timeout_seconds": "5"}', "invalid_field", "timeout_seconds"),
    (b'{"command": "true", "timeout_seconds": true}', "invalid_field", "timeout_seconds"),
    (b'{"command": "true", "timeout_seconds": -1}', "invalid_field", "timeout_seconds"),
    (b'{"command": "true", "timeout_seconds": 0}', "invalid_field", "timeout_seconds"),
    (b'{"command": "true", "timeout_seconds": 1e12}', "invalid_field", "timeout_seconds"),
    (b'{"command": "true", "timeout_seconds": 5.5}', "invalid_field", "timeout_seconds"),
    (b'{"command": "true", "timeout_seconds": 1' + b"0" * 5000 + b"}", "malformed_json", None),
    (b"{}", "invalid_field", "command"),
    (b'{"command": ""}', "invalid_field", "command"),
    (b'{"command": "  "}', "invalid_field", "command"),
    (b'{"command": 7}', "invalid_field", "command"),
    (b'{"command": "true", "env": {"1X": "a"}}', "invalid_field", "env"),
    (b'{"command": "true", "env": {"X-Y": "a"}}', "invalid_field", "env"),
    (b'{"command": "true", "env": {"X": 1}}', "invalid_field", "env"),
    (b'{"command": "true", "env": {"X": "a\\u0000b"}}', "invalid_field", "env"),
    (b'{"command": "true", "env": {"X": "\\ud800"}}', "invalid_field", "env"),
    (b'{"command": "true", "env": "X=1"}', "invalid_field", "env"),
]


def test_a_bad_body_is_a_json_400_naming_the_field(api: Api, subtests: pytest.Subtests) -> None:
    for body, code, field in BAD_BODIES:
        with subtests.test(body=body[:50]):
            error = assert_json_error(api.call("POST", "/api/v1/jobs", data=body, headers=JSON), 400, code)
            if field is not None:
                assert error["field"] == field
                assert field in error["message"]
    assert api.call("GET", "/api/v1/jobs").json() == []


def test_a_body_that_is_not_declared_json_is_a_415(api: Api, subtests: pytest.Subtests) -> None:
    wrong = ("text/plain", "application/x-www-form-urlencoded", None, "application/json; charset=latin-1")
    for content_type in wrong:
        with subtests.test(content_type=content_type):
            headers = {} if content_type is None else {"Content-Type": content_type}
            response = api.call("POST", "/api/v1/jobs", data=b'{"command": "true"}', headers=headers)
            assert_json_error(response, 415, "unsupported_media_type")


def test_json_with_a_utf8_charset_is_accepted(api: Api) -> None:
    response = api.call(
        "POST",
        "/api/v1/jobs",
        data='{"command": "echo ünïcødé"}'.encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 202
    assert api.wait_status(response.json()["job_id"])["stdout"] == "ünïcødé\n"


def test_a_body_over_one_mib_is_a_json_413_with_or_without_a_length(api: Api) -> None:
    body = json.dumps({"command": "true", "pad": "x" * MAX_BODY_BYTES}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    sized = api.call("POST", "/api/v1/jobs", data=body, headers=JSON)
    chunked = api.call("POST", "/api/v1/jobs", data=chunks(), headers=JSON)

    assert_json_error(sized, 413, "body_too_large")
    assert_json_error(chunked, 413, "body_too_large")


def test_a_malformed_chunked_body_is_a_json_400(api: Api) -> None:
    request = (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", api.node.api_port), timeout=5) as sock:
        sock.sendall(request)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "malformed_body"
    OBSERVED[("/api/v1/jobs", "post")].add(400)


def test_bad_list_parameters_are_a_json_400(api: Api, subtests: pytest.Subtests) -> None:
    for query in ("limit=0", "limit=abc", "limit=100000", "limit=", "status=DONE"):
        with subtests.test(query=query):
            assert_json_error(api.call("GET", f"/api/v1/jobs?{query}"), 400, "invalid_field")


# --- the server ----------------------------------------------------------------------------------


def test_a_slow_client_does_not_stall_the_others(api: Api) -> None:
    slow = [socket.create_connection(("127.0.0.1", api.node.api_port), timeout=5) for _ in range(3)]
    try:
        for sock in slow:
            sock.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finish
        slow[0].sendall(b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")  # body never does

        response = api.call("GET", "/api/v1/health", timeout=3)

        assert response.status_code == 200
    finally:
        for sock in slow:
            sock.close()


# --- the OpenAPI document (keep last: it checks what the tests above observed) -------------------


def bottle_routes(node: Node) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route the node's Bottle app serves."""
    from web.app import make_app

    class NoBackend:
        node_id = node.node_id

    app = make_app(NoBackend())  # type: ignore[arg-type]
    return {(re.sub(r"<(\w+)[^>]*>", r"{\1}", r.rule), r.method.lower()) for r in app.routes}


def test_the_openapi_document_describes_every_route_and_every_status_seen(api: Api) -> None:
    api.call("GET", "/api/v1/health")
    response = api.call("GET", "/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}

    assert document["openapi"].startswith("3.")
    assert described == bottle_routes(api.node)
    missing = {
        f"{method.upper()} {path} → {status}"
        for (path, method), statuses in OBSERVED.items()
        if (path, method) in described
        for status in statuses
        if str(status) not in document["paths"][path][method]["responses"]
    }
    assert not missing, f"statuses the API gave but the document does not list: {sorted(missing)}"
    schemas = document["components"]["schemas"]
    assert "Error" in schemas
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {status}"


def test_a_draining_node_alone_refuses_new_jobs_with_a_409_until_it_resumes(api: Api) -> None:
    assert api.call("POST", "/api/v1/drain", json={}).json()["status"] == "DRAINING"
    assert api.call("GET", "/api/v1/status").json()["status"] == "DRAINING"
    refused = assert_json_error(
        api.call("POST", "/api/v1/jobs", json={"command": "echo never"}), 409, "node_draining"
    )
    assert "no live peer" in refused["message"]
    assert api.call("GET", "/api/v1/jobs").json() == []

    assert api.call("POST", "/api/v1/resume", json={}).json()["status"] == "IDLE"
    assert api.submit("echo again")


def test_drain_and_resume_take_json_only_and_no_fields(api: Api, subtests: pytest.Subtests) -> None:
    for path in ("/api/v1/drain", "/api/v1/resume"):
        with subtests.test(path=path):
            assert_json_error(api.call("POST", path), 415, "unsupported_media_type")
            assert_json_error(api.call("POST", path, json={"now": True}), 400, "invalid_body")
    assert api.call("GET", "/api/v1/status").json()["status"] == "IDLE"
