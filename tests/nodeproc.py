"""A real `run_node.py` process for the process tier: output goes to files, so no reader threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import wait_for

RUN_NODE = Path(__file__).resolve().parent.parent / "run_node.py"
# Settings a node reads from its environment: the caller's own values must not leak into a test.
NODE_VARIABLES = frozenset({"LOG_LEVEL", "DISCOVERY_PORT", "HEARTBEAT_INTERVAL", "PEER_TIMEOUT"})
DEFAULT = Path("<run_node.py default>")  # node_process(data_dir=DEFAULT): no --data-dir flag


class NodeProcess:
    """One `run_node.py` child; `start()` returns once its `node_started` line is out."""

    def __init__(self, args: list[str], cwd: Path, log_dir: Path) -> None:
        self.args = args
        self.cwd = cwd
        log_dir.mkdir(parents=True, exist_ok=True)
        stem = f"node-{len(list(log_dir.glob('*.stdout')))}"
        self.stdout_path = log_dir / f"{stem}.stdout"
        self.stderr_path = log_dir / f"{stem}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUN_NODE), *self.args],
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
        wait_for(
            lambda: self.started_line() or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout,
            what="node_started on the node's stdout",
        )
        if self.started_line() is None:
            raise AssertionError(f"node exited with {self.proc.returncode}: {self.stderr()}")
        return self

    def lines(self) -> list[str]:
        return self.stdout_path.read_text(errors="replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """Every complete stdout line, parsed as JSON."""
        return [json.loads(line) for line in self.lines() if line.strip()]

    def started_line(self) -> dict[str, Any] | None:
        for line in self.lines():
            if '"node_started"' in line:
                return json.loads(line)
        return None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def api_url(self) -> str:
        line = self.started_line()
        assert line is not None, "the node has not started"
        return line["api_url"]

    @property
    def node_id(self) -> str:
        line = self.started_line()
        assert line is not None, "the node has not started"
        return line["node_id"]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL and reap; safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
