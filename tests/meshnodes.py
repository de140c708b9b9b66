"""Real `run_node.py` processes for the discovery tiers (process tests, LAN tests, benchmarks).

A MeshNode writes its stdout/stderr to files (no reader threads), so a test reads the JSON log
lines whenever it likes. A node may run inside a network namespace the test created (`netns=`):
its API then listens on the namespace's own loopback and is asked from inside that namespace by
a short-lived `ip netns exec` helper, never from the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
RUN_NODE = REPO / "run_node.py"

# Asks an API from inside a namespace: prints the JSON body, or exits 1 when nothing answers.
_NETNS_GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())\n"
    "except Exception as exc:\n"
    "    sys.exit(f'unreachable: {exc}')\n"
)

# Runs API requests from inside a namespace, in order: a JSON list of [method, url, body or null]
# on stdin, a JSON list of [HTTP status, parsed body] on stdout (status 0: nothing answered).
_NETNS_REQUESTS = (
    "import json, sys, urllib.error, urllib.request\n"
    "timeout = float(sys.argv[1])\n"
    "out = []\n"
    "for method, url, body in json.load(sys.stdin):\n"
    "    data = None if body is None else json.dumps(body).encode()\n"
    "    req = urllib.request.Request(url, data=data, method=method,\n"
    "                                 headers={'Content-Type': 'application/json'})\n"
    "    try:\n"
    "        with urllib.request.urlopen(req, timeout=timeout) as response:\n"
    "            out.append([response.status, json.loads(response.read())])\n"
    "    except urllib.error.HTTPError as exc:\n"
    "        out.append([exc.code, json.loads(exc.read() or b'null')])\n"
    "    except OSError as exc:\n"
    "        out.append([0, str(exc)])\n"
    "print(json.dumps(out))\n"
)

Call = tuple[str, str, dict[str, Any] | None]  # method, path under api_url, JSON body


# Settings a node reads from its environment: the caller's own values must not leak into a test.
_NODE_VARIABLES = frozenset({"LOG_LEVEL", "DISCOVERY_PORT", "HEARTBEAT_INTERVAL", "PEER_TIMEOUT"})


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll `predicate` until it is truthy; returns the seconds it took. AssertionError at the deadline."""
    began = time.monotonic()
    wait_for(predicate, timeout, interval, what)
    return time.monotonic() - began


def log_time(line: dict[str, Any]) -> float:
    """A log line's `timestamp` (RFC 3339, UTC) as seconds since the epoch, comparable to time.time()."""
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


class MeshNode:
    """One `run_node.py` child. `start()` returns at once; `wait_started()` waits for node_started."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        netns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.netns = netns
        self.env = env or {}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ------------------------------------------------------------------------------

    def start(self) -> MeshNode:
        """Spawn the process (does not wait for it); earlier output of the same name is overwritten."""
        env = {k: v for k, v in os.environ.items() if k not in _NODE_VARIABLES}
        env.update(self.env)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            # `ip netns exec` execs the command, so the pid and signals are the node's own.
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, str(RUN_NODE), *self.args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
        return self

    def wait_started(self, timeout: float = 30.0) -> MeshNode:
        """Block until the node_started line is out; AssertionError if the node exits or is too slow."""
        deadline = time.monotonic() + timeout
        while self.started_line() is None:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise AssertionError(f"{self.name} exited with {code}: {self.stderr().strip()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log node_started within {timeout}s")
            time.sleep(0.02)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap; safe to call twice."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """Send SIGTERM (a clean stop: the node broadcasts a leave notice); does not wait."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; safe to call twice."""
        if not self.alive():
            return
        self.terminate()
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    # -- logs ---------------------------------------------------------------------------------

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every complete JSON line on stdout (optionally only those of one event), in order."""
        try:
            text = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):  # a half-written last line
                item = json.loads(line)
                if isinstance(item, dict) and (event is None or item.get("event") == event):
                    found.append(item)
        return found

    def started_line(self) -> dict[str, Any] | None:
        lines = self.events("node_started")
        return lines[-1] if lines else None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def node_id(self) -> str:
        line = self.started_line()
        assert line is not None, f"{self.name} has not started"
        return line["node_id"]

    @property
    def incarnation(self) -> int:
        line = self.started_line()
        assert line is not None, f"{self.name} has not started"
        return int(line["incarnation"])

    @property
    def api_url(self) -> str:
        line = self.started_line()
        assert line is not None, f"{self.name} has not started"
        return line["api_url"]

    # -- API ----------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 3.0) -> Any:
        """GET `<api_url><path>` as JSON; raises OSError when nothing answers."""
        url = self.api_url + path
        if self.netns is None:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own node
                return json.loads(response.read())
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-I", "-c", _NETNS_GET, url, str(timeout)],
            capture_output=True,
            timeout=timeout + 10,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(done.stderr.decode(errors="replace").strip())
        return json.loads(done.stdout)

    def post(self, path: str, body: dict[str, Any], timeout: float = 3.0) -> Any:
        """POST JSON to `<api_url><path>` from the host (not for nodes in a namespace)."""
        assert self.netns is None, "a namespaced node's API is reached only from inside its namespace"
        request = urllib.request.Request(  # noqa: S310 - our own node
            self.api_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own node
            return json.loads(response.read())

    def call_many(self, calls: list[Call], timeout: float = 35.0) -> list[tuple[int, Any]]:
        """Make API requests in order; each gives (HTTP status, parsed JSON body), error statuses
        included, or (0, why) when nothing answered. A namespaced node's requests all run in one
        `ip netns exec` helper inside its namespace."""
        if self.netns is None:
            return [_call_here(self.api_url + path, method, body, timeout) for method, path, body in calls]
        payload = json.dumps([[method, self.api_url + path, body] for method, path, body in calls])
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-I", "-c", _NETNS_REQUESTS, str(timeout)],
            input=payload.encode(),
            capture_output=True,
            timeout=timeout * len(calls) + 20,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(done.stderr.decode(errors="replace").strip())
        return [(status, body) for status, body in json.loads(done.stdout)]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 35.0) -> Any:
        """One API request: (HTTP status, parsed JSON body); see call_many."""
        return self.call_many([(method, path, body)], timeout)[0]

    @property
    def mesh_address(self) -> tuple[str, int]:
        """(host, port) of the node's mesh port, as logged in node_started."""
        line = self.started_line()
        assert line is not None, f"{self.name} has not started"
        host, _, port = line["mesh_address"].rpartition(":")
        return host, int(port)

    def answers(self) -> bool:
        """True when GET /health answers 200."""
        try:
            self.get("/health", timeout=1.0)
        except (OSError, ValueError):
            return False
        return True

    def peers(self, include_all: bool = False) -> list[dict[str, Any]]:
        return self.get("/peers?all=true" if include_all else "/peers")

    def peer_ids(self) -> set[str]:
        """The node ids this node lists as live."""
        return {peer["node_id"] for peer in self.peers()}

    def status(self) -> dict[str, Any]:
        return self.get("/status")


def _call_here(url: str, method: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - our own node
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own node
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError as exc:
        return 0, str(exc)


def sees_exactly(node: MeshNode, others: list[MeshNode]) -> bool:
    """True when `node` lists as live exactly the ids of `others` (so never itself)."""
    try:
        return node.peer_ids() == {other.node_id for other in others}
    except (OSError, ValueError):
        return False


def all_see_all(nodes: list[MeshNode]) -> bool:
    return all(sees_exactly(node, [other for other in nodes if other is not node]) for node in nodes)
