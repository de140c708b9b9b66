"""Jobs across real node processes: a cluster of `run_node.py` children and the REST calls the
mesh tests make (tests/test_mesh_processes.py, tests/test_mesh_lan.py, benchmarks/jobs.py).

Every helper speaks to a node only through its REST API (MeshNode.call), so the same code drives
nodes on this host and nodes inside a test's network namespaces. Job processes that may outlive
their node (a `kill -9` leaves them orphaned) write their shell's pid, which is also their process
group, to `Cluster.pidfile`; `close()` ends those groups by id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import free_udp_port
from tests.meshnodes import MeshNode, all_see_all, wait_until

INTERVAL = 0.2
PEER_TIMEOUT = 1.0
FINAL = frozenset({"JOB_COMPLETED", "JOB_FAILED", "JOB_CANCELLED", "JOB_TIMEOUT"})
UNSETTLED = frozenset({"JOB_PENDING", "JOB_RUNNING"})


class Cluster:
    """The nodes of one test on this host, on the test's own discovery port; all killed at close()."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_udp_port()
        self.nodes: list[MeshNode] = []
        self.pidfile = tmp_path / "job-pids"

    def spawn(self, name: str, *args: str, data_dir: Path | None = None) -> MeshNode:
        """Start a node without waiting; its data dir is tmp_path/<name> unless given."""
        argv = [
            "--discovery-port",
            str(self.port),
            "--heartbeat-interval",
            f"{INTERVAL}s",
            "--peer-timeout",
            f"{PEER_TIMEOUT}s",
            "--api-port",
            "0",
            "--data-dir",
            str(data_dir or self.tmp_path / name),
            *args,
        ]
        node = MeshNode(f"{name}-{len(self.nodes)}", argv, self.tmp_path / "logs")
        self.nodes.append(node)
        return node.start()

    def start(self, *names: str, args: tuple[str, ...] = ("--max-jobs", "2")) -> list[MeshNode]:
        """Start nodes side by side; return once every one lists all the others."""
        nodes = [self.spawn(name, *args) for name in names]
        for node in nodes:
            node.wait_started()
        wait_until(lambda: all_see_all(nodes), 15.0, "every node to list all the others")
        return nodes

    def tracked(self, command: str) -> str:
        """`command` run by a shell that first records its pid (its process group) for close()."""
        return f"echo $$ >> {self.pidfile}; {command}"

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        kill_job_groups(self.pidfile)


def kill_job_groups(pidfile: Path) -> None:
    """SIGKILL every process group listed in `pidfile` (job shells this test started)."""
    with contextlib.suppress(FileNotFoundError):
        for line in pidfile.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(line), signal.SIGKILL)


# -- REST calls ---------------------------------------------------------------------------------


def expect(answer: tuple[int, Any], status: int) -> Any:
    """The body of an answer that must have `status`."""
    code, body = answer
    assert code == status, f"expected HTTP {status}, got {code}: {body}"
    return body


def job_body(command: str, **fields: Any) -> dict[str, Any]:
    return {"command": command, "timeout_seconds": 60, **fields}


def submit(node: MeshNode, command: str, **fields: Any) -> dict[str, Any]:
    """POST /jobs; the 202 body."""
    return expect(node.call("POST", "/jobs", job_body(command, **fields)), 202)


def submit_many(node: MeshNode, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST /jobs for every body, in order (one namespace helper for all of them); the 202 bodies."""
    return [expect(answer, 202) for answer in node.call_many([("POST", "/jobs", b) for b in bodies])]


def job(node: MeshNode, job_id: str, wait: float = 0) -> dict[str, Any] | None:
    """GET /jobs/<id> (?wait= when given); None on 404."""
    path = f"/jobs/{job_id}" + (f"?wait={wait:g}" if wait else "")
    code, body = node.call("GET", path, timeout=wait + 10)
    if code == 404:
        return None
    assert code == 200, f"GET {path}: HTTP {code}: {body}"
    return body


def finals(node: MeshNode, job_ids: list[str], wait: float = 30) -> list[dict[str, Any]]:
    """Each job as `node` shows it once final (GET ?wait=, in order); AssertionError if one is not."""
    calls = [("GET", f"/jobs/{job_id}?wait={wait:g}", None) for job_id in job_ids]
    answers = node.call_many(calls, wait + 10)
    found = [expect(answer, 200) for answer in answers]
    stuck = [(j["job_id"], j["status"]) for j in found if j["status"] not in FINAL]
    assert not stuck, f"not final after {wait}s on {node.name}: {stuck}"
    return found


def jobs(node: MeshNode) -> list[dict[str, Any]]:
    """GET /jobs: every job the node holds (up to 1000), newest first."""
    return expect(node.call("GET", "/jobs?limit=1000"), 200)


def status_of(node: MeshNode, job_id: str) -> str | None:
    found = job(node, job_id)
    return None if found is None else found["status"]


def wait_status(node: MeshNode, job_id: str, statuses: set[str] | frozenset[str], timeout: float) -> str:
    """Poll until `node` shows the job in one of `statuses`; the status it reached."""
    seen: list[str | None] = [None]

    def reached() -> bool:
        seen[0] = status_of(node, job_id)
        return seen[0] in statuses

    wait_until(reached, timeout, f"job {job_id} on {node.name} to reach {sorted(statuses)}", 0.05)
    return seen[0]  # type: ignore[return-value]


@contextlib.contextmanager
def only_route_to(origin: MeshNode, others: list[MeshNode]) -> Iterator[None]:
    """While inside, `origin` and `others` drain, so jobs posted to `origin` all go to the one
    node left (unpinned, so they may move on if it dies); they resume on the way out."""
    for node in (origin, *others):
        expect(node.call("POST", "/drain"), 200)
    for node in others:
        wait_until(
            lambda n=node: peer_status(origin, n.node_id) == "DRAINING", 10, "the origin to see a drain"
        )
    yield
    for node in (origin, *others):
        expect(node.call("POST", "/resume"), 200)
    for node in others:
        wait_until(lambda n=node: peer_status(origin, n.node_id) == "IDLE", 10, "the origin to see a resume")


def wait_nothing_unsettled(origin: MeshNode, since: float, timeout: float) -> None:
    """Wait until no job on `origin` is PENDING or RUNNING; print how long after `since` it took."""
    wait_until(
        lambda: not [j for j in jobs(origin) if j["status"] in UNSETTLED],
        timeout,
        "no job left PENDING or RUNNING on the origin",
    )
    print(f"\nnothing unsettled on the origin {time.monotonic() - since:.2f}s after kill -9")


def peer_status(observer: MeshNode, node_id: str) -> str | None:
    """How `observer` lists `node_id` in ?all=true (None when it does not know it)."""
    found = [p["status"] for p in observer.peers(include_all=True) if p["node_id"] == node_id]
    return found[0] if found else None
