"""Real `run_node.py` processes over real sockets on 127.0.0.1: flags, crashes, signals, logs, files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import free_port, free_udp_port, group_is_gone, wait_for
from tests.nodeproc import DEFAULT, NODE_VARIABLES, RUN_NODE, NodeProcess

pytestmark = pytest.mark.process

StartNode = Callable[..., NodeProcess]
FINAL = {"JOB_COMPLETED", "JOB_FAILED", "JOB_TIMEOUT", "JOB_CANCELLED"}


def run_node(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run run_node.py to its end (for flags that must stop it at once)."""
    env = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
    return subprocess.run(
        [sys.executable, str(RUN_NODE), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def submit(node: NodeProcess, command: str, **fields: Any) -> str:
    response = requests.post(f"{node.api_url}/jobs", json={"command": command, **fields}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def job(node: NodeProcess, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{node.api_url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(node: NodeProcess, job_id: str, *statuses: str, timeout: float = 10) -> dict[str, Any]:
    wanted = set(statuses) or FINAL
    return wait_for(lambda: (j := job(node, job_id))["status"] in wanted and j, timeout, what=f"{wanted}")


def read_pgid(path: Path) -> int:
    """The process group a job wrote to `path` with `echo $$ > path`."""
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), what=f"{path.name} written"))


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Process groups to SIGKILL at teardown: jobs a crashed node left behind."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# --- the command line ----------------------------------------------------------------------------


def test_help_documents_every_flag(tmp_path: Path) -> None:
    import run_node as module

    done = run_node("--help", cwd=tmp_path)

    assert done.returncode == 0
    for action in module.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in done.stdout, f"{flag} is not in --help"
        assert action.help, f"{action.option_strings} has no help text"
    for flag in ("--api-port", "-api-port", "--api-host", "--node-id", "--data-dir", "--max-jobs",
                 "--log-format", "--log-level"):  # fmt: skip
        assert flag in done.stdout


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes anywhere it may; sysfs refuses even root
        return Path("/sys/worker-mesh-test-data")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "data"


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


BAD_FLAGS: dict[str, Callable[[Path], list[str]]] = {
    "port out of range": lambda _: ["--api-port", "99999"],
    "port not a number": lambda _: ["--api-port", "http"],
    "unknown log level": lambda _: ["--log-level", "loud"],
    "unknown log format": lambda _: ["--log-format", "xml"],
    "zero max jobs": lambda _: ["--max-jobs", "0"],
    "max jobs not a number": lambda _: ["--max-jobs", "many"],
    "unknown flag": lambda _: ["--no-such-flag"],
    "data dir is a file": lambda tmp: ["--data-dir", str(_a_file(tmp))],
    "data dir inside a file": lambda tmp: ["--data-dir", str(_a_file(tmp) / "data")],
    "data dir unwritable": lambda tmp: ["--data-dir", str(_unwritable_dir(tmp))],
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_a_bad_flag_exits_2_with_one_line_on_stderr_and_no_traceback(tmp_path: Path, case: str) -> None:
    args = BAD_FLAGS[case](tmp_path)
    for flag, value in (("--api-port", "0"), ("--data-dir", str(tmp_path / "data")),
                        ("--discovery-port", str(free_udp_port()))):  # fmt: skip
        if flag not in args:
            args += [flag, value]

    done = run_node(*args, cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("run_node.py: error:")


def test_an_api_port_already_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        done = run_node("--api-port", str(port), "--data-dir", str(tmp_path / "data"),
                        "--discovery-port", str(free_udp_port()), cwd=tmp_path)  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert str(port) in done.stderr


def test_a_data_dir_in_use_by_a_running_node_is_refused(tmp_path: Path, node_process: StartNode) -> None:
    node_process(data_dir=tmp_path / "shared")

    done = run_node("--api-port", "0", "--data-dir", str(tmp_path / "shared"),
                    "--discovery-port", str(free_udp_port()), cwd=tmp_path)  # fmt: skip

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "in use" in done.stderr


# --- crashes, signals and restarts ---------------------------------------------------------------


def test_after_kill_9_a_restart_keeps_the_id_fails_the_running_job_and_runs_the_pending_one(
    tmp_path: Path, node_process: StartNode, reaper: list[int]
) -> None:
    data = tmp_path / "data"
    node = node_process("--max-jobs", "1", data_dir=data)
    running = submit(node, "echo $$ > crashed-pgid; sleep 300")
    wait_status(node, running, "JOB_RUNNING")
    crashed_pgid = read_pgid(data / "work" / "crashed-pgid")
    reaper.append(crashed_pgid)  # only matters if the node fails to kill it
    pending = submit(node, "echo ran-after-restart")
    assert job(node, pending)["status"] == "JOB_PENDING"

    node.kill()
    again = node_process("--max-jobs", "1", data_dir=data)

    assert again.node_id == node.node_id
    crashed = job(again, running)
    assert crashed["status"] == "JOB_FAILED"
    assert crashed["error"] == "node restarted"
    resumed = wait_status(again, pending)
    assert resumed["status"] == "JOB_COMPLETED"
    assert resumed["stdout"] == "ran-after-restart\n"
    wait_for(lambda: group_is_gone(crashed_pgid), 5.0, what="the restarted node to kill the old job's group")
    listed = requests.get(f"{again.api_url}/jobs", timeout=10).json()
    assert {running, pending} <= {item["job_id"] for item in listed}


def test_sigterm_cancels_the_running_job_kills_its_group_and_exits_0(
    tmp_path: Path, node_process: StartNode, reaper: list[int]
) -> None:
    data = tmp_path / "data"
    node = node_process(data_dir=data)
    running = submit(node, "echo $$ > pgid; sleep 300 & sleep 300")
    wait_status(node, running, "JOB_RUNNING")
    pgid = read_pgid(data / "work" / "pgid")
    reaper.append(pgid)  # only matters if the node fails to kill it

    node.signal(signal.SIGTERM)

    assert node.wait(timeout=10) == 0
    assert group_is_gone(pgid)
    again = node_process(data_dir=data)
    stopped = job(again, running)
    assert stopped["status"] == "JOB_CANCELLED"
    assert stopped["error"]


def test_a_second_signal_exits_at_once(tmp_path: Path, node_process: StartNode, reaper: list[int]) -> None:
    data = tmp_path / "data"
    node = node_process(data_dir=data)
    stubborn = submit(node, "trap '' TERM; echo $$ > pgid; sleep 300")  # makes the clean stop slow
    wait_status(node, stubborn, "JOB_RUNNING")
    pgid = read_pgid(data / "work" / "pgid")
    reaper.append(pgid)  # only matters if the node fails to kill it

    node.signal(signal.SIGTERM)
    wait_for(lambda: any(e["event"] == "node_stopping" for e in node.events()), what="node_stopping")
    node.signal(signal.SIGTERM)

    assert node.wait(timeout=5) == 128 + signal.SIGTERM
    wait_for(lambda: group_is_gone(pgid), 5.0, what="the job's group to be killed on the way out")


# --- logs and files ------------------------------------------------------------------------------


def test_log_lines_are_json_facts_and_never_show_env_values(tmp_path: Path, node_process: StartNode) -> None:
    node = node_process()
    job_id = submit(node, "echo $SECRET_X | wc -c", env={"SECRET_X": "hunter2-value"})
    finished = wait_status(node, job_id)
    requests.get(f"{node.api_url}/jobs/{job_id}", timeout=10)
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=10) == 0

    events = node.events()
    text = node.stdout_path.read_text()

    assert finished["stdout"].strip() == "14"  # the job did see the value
    assert finished["env"] == {"SECRET_X": "***"}
    assert "hunter2-value" not in text
    for event in events:
        assert {"timestamp", "level", "event", "node_id"} <= set(event), event
        assert event["timestamp"].endswith("Z")
        assert event["event"].islower()
        assert " " not in event["event"]
    names = [event["event"] for event in events]
    for fact in ("node_started", "job_submitted", "job_started", "job_finished", "node_stopped"):
        assert fact in names
    assert all(e["job_id"] == job_id for e in events if e["event"] in ("job_started", "job_finished"))


def test_the_seed_sqlite_tip_reads_the_jobs_table(tmp_path: Path, node_process: StartNode) -> None:
    data = tmp_path / "data"
    node = node_process("-api-port", "0", data_dir=data)  # the seed's single-dash spelling
    job_id = submit(node, "echo from-sqlite")
    wait_status(node, job_id)

    with contextlib.closing(sqlite3.connect(data / "mesh.db")) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT 5").fetchall()

    assert [row["job_id"] for row in rows] == [job_id]
    assert rows[0]["command"] == "echo from-sqlite"
    assert rows[0]["status"] == "JOB_COMPLETED"
    assert bytes(rows[0]["stdout"]) == b"from-sqlite\n"


def test_three_nodes_started_from_one_directory_get_their_own_ids_and_databases(
    tmp_path: Path, node_process: StartNode
) -> None:
    ports = sorted({free_port() for _ in range(3)})
    assert len(ports) == 3
    nodes = [node_process("--api-port", str(port), data_dir=DEFAULT, cwd=tmp_path) for port in ports]

    databases = {Path(node.started_line()["db_path"]) for node in nodes}  # type: ignore[index]

    assert len({node.node_id for node in nodes}) == 3
    assert len(databases) == 3
    assert all(db.is_file() and db.is_relative_to(tmp_path) for db in databases)
    for node in nodes:
        assert requests.get(f"{node.api_url}/health", timeout=10).json()["node_id"] == node.node_id
