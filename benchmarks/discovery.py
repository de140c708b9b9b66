"""Discovery benchmark: N real nodes on one host; how fast a newcomer is known, a crash and a leave noticed.

For N = 3, 10, 20: start N-1 nodes side by side and wait until they all list each other, then
start the last one and measure from the moment its API answers /health (starting a Python process
takes about a second on a small machine; that is start-up, not discovery) until every node lists
every other. Then `kill -9` one node and SIGTERM another, and measure until every survivor has
dropped it. Times come from the nodes' own log lines (`peer_joined`, `peer_failed`, `peer_left`,
stamped when the registry changed its table), compared with the host's wall clock; the API is
polled as well, to confirm what the logs say from the outside.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_udp_port
from tests.meshnodes import MeshNode, all_see_all, log_time, wait_until

SIZES = (3, 10, 20)
ROUNDS = 3  # per size; the table shows the median and the worst
INTERVAL = 1.0
PEER_TIMEOUT = 3.0
TARGET_JOIN = 0.5  # all-see-all at N = 20, after the last node's start
TARGET_LEAVE = 0.2
TARGET_CRASH = PEER_TIMEOUT + INTERVAL


@dataclass(frozen=True)
class Result:
    nodes: int
    spawn_to_api: float  # the last node: process spawned → /health answers
    join: float  # /health answers → every node lists all others (logs)
    join_api: float  # /health answers → every API says so (includes polling N APIs)
    crash: float  # kill -9 → every survivor has logged peer_failed
    leave: float  # SIGTERM → every survivor has logged peer_left


def _last_event_time(observers: list[MeshNode], event: str, peer_id: str) -> float | None:
    """When the last of `observers` logged `event` about `peer_id` (epoch seconds), or None."""
    times = []
    for node in observers:
        stamps = [log_time(line) for line in node.events(event) if line.get("peer_id") == peer_id]
        if not stamps:
            return None
        times.append(stamps[0])
    return max(times)


def measure(size: int, workdir: Path) -> Result:
    """One round with `size` nodes; every process is gone when it returns."""
    port = free_udp_port()
    nodes = [
        MeshNode(
            f"n{size}-{i:02d}",
            [
                "--api-port",
                "0",
                "--discovery-port",
                str(port),
                "--heartbeat-interval",
                f"{INTERVAL:g}s",
                "--peer-timeout",
                f"{PEER_TIMEOUT:g}s",
                "--max-jobs",
                "1",
                "--data-dir",
                str(workdir / f"n{size}-{i:02d}"),
            ],
            workdir / "logs",
        )
        for i in range(size)
    ]
    try:
        *first, last = nodes
        for node in first:
            node.start()
        for node in first:
            node.wait_started(timeout=120)
        wait_until(lambda: all_see_all(first), 60, "the first nodes to list each other")

        spawned = time.time()
        last.start()
        wait_until(lambda: last.started_line() is not None and last.answers(), 60, "the last node's API")
        # node_started is logged once the API is serving: the moment it answers, without polling lag.
        answered = log_time(last.started_line() or {})
        wait_until(lambda: all_see_all(nodes), 30, "every node to list all others")
        join_api = time.time() - answered
        new_id = last.node_id
        heard_new = _last_event_time(first, "peer_joined", new_id)
        heard_all = max(log_time(line) for line in last.events("peer_joined") if line["peer_id"] != new_id)
        assert heard_new is not None
        # <= 0: everyone knew before node_started was logged (the start heartbeat goes out just before).
        join = max(0.0, max(heard_new, heard_all) - answered)

        victim, leaver, *survivors = nodes
        victim.kill()
        killed = time.time()
        wait_until(
            lambda: _last_event_time([leaver, *survivors], "peer_failed", victim.node_id),
            PEER_TIMEOUT + INTERVAL + 30,
            "every survivor to log peer_failed",
        )
        crash = (_last_event_time([leaver, *survivors], "peer_failed", victim.node_id) or 0) - killed

        leaver.terminate()
        stopped = time.time()
        wait_until(
            lambda: _last_event_time(survivors, "peer_left", leaver.node_id),
            30,
            "every survivor to log peer_left",
        )
        leave = (_last_event_time(survivors, "peer_left", leaver.node_id) or 0) - stopped
        wait_until(lambda: all_see_all(survivors), 10, "the survivors' APIs to list only each other")
        return Result(size, answered - spawned, join, join_api, crash, leave)
    finally:
        for node in nodes:
            node.kill()


def _verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "**missed**"


def _cell(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    return f"{statistics.median(values) * scale:.{digits}f} / {max(values) * scale:.{digits}f}"


def run() -> str:
    """Run every size ROUNDS times; returns the BENCHMARKS.md section."""
    by_size: dict[int, list[Result]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-discovery-"))
    for size in SIZES:
        for round_no in range(ROUNDS):
            began = time.monotonic()
            try:
                result = measure(size, tmp / f"n{size}-r{round_no}")
            except AssertionError:
                print(f"discovery N={size} round {round_no + 1} failed; the nodes' logs are kept in {tmp}")
                raise
            by_size.setdefault(size, []).append(result)
            print(
                f"discovery N={size} round {round_no + 1}: join {result.join:.3f}s "
                f"(API {result.join_api:.3f}s), crash {result.crash:.3f}s, leave {result.leave:.3f}s "
                f"[{time.monotonic() - began:.1f}s]",
                flush=True,
            )
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for size, results in by_size.items():
        rows.append(
            f"| {size} | {_cell([r.spawn_to_api for r in results], digits=2)} "
            f"| {_cell([r.join for r in results], 1000)} | {_cell([r.join_api for r in results], 1000)} "
            f"| {_cell([r.crash for r in results], digits=2)} | {_cell([r.leave for r in results], 1000)} |"
        )
    everything = [r for results in by_size.values() for r in results]
    worst_join = max(r.join for r in by_size[SIZES[-1]])
    worst_leave = max(r.leave for r in everything)
    worst_crash = max(r.crash for r in everything)
    return "\n".join(
        [
            "## Discovery (benchmarks/discovery.py)",
            "",
            f"N real `run_node.py` processes on this host, one shared discovery port, heartbeat interval "
            f"{INTERVAL:g}s, peer timeout {PEER_TIMEOUT:g}s, {ROUNDS} rounds per N (cells: median / worst). "
            "The last node is started after the others know each other; **join is measured from the moment "
            "its API answers** (its `node_started` line, logged once the API is serving), not from the "
            "process spawn: spawn → API is Python start-up on this machine, shown separately. Join, crash "
            "and leave times come from the nodes' own `peer_joined` / `peer_failed` / `peer_left` log lines "
            "(the last observer to change its table) against the host's wall clock; 0 means every node "
            'already knew the newcomer when its API came up. "Join, confirmed by API" is the moment the '
            "test saw it by polling every node's GET /api/v1/peers, which adds the cost of N HTTP requests "
            "per poll. A crash is noticed PEER_TIMEOUT after the victim was last heard, which was up to one "
            "interval before the kill: expect between "
            f"{PEER_TIMEOUT - INTERVAL:g}s and {PEER_TIMEOUT + INTERVAL:g}s plus the expiry tick.",
            "",
            "| N | last node spawn → API (s) | join (ms) | join, confirmed by API (ms) | "
            "kill -9 noticed by all (s) | SIGTERM noticed by all (ms) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Targets (worst round):",
            f"- all-see-all at N = {SIZES[-1]} within {TARGET_JOIN}s of the last start: "
            f"{worst_join:.3f}s — {_verdict(worst_join, TARGET_JOIN)}",
            f"- leave noticed within {TARGET_LEAVE}s: {worst_leave:.3f}s — "
            f"{_verdict(worst_leave, TARGET_LEAVE)}",
            f"- crash noticed within PEER_TIMEOUT + one interval ({TARGET_CRASH:g}s): "
            f"{worst_crash:.3f}s — {_verdict(worst_crash, TARGET_CRASH)}",
            "",
        ]
    )
