"""Discovery between real `run_node.py` processes on one host, over real UDP broadcast.

Every test gets its own free discovery port, shared by all of its nodes (so nothing else on the
host hears them), free API ports and data dirs under tmp_path. Broadcasts stay on 127.255.255.255.
Waits poll the nodes' APIs with a deadline; the measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proto import wire
from proto.codec import pb
from tests.helpers import free_port, free_udp_port
from tests.meshnodes import (
    RUN_NODE,
    MeshNode,
    all_see_all,
    log_time,
    wait_until,
)

pytestmark = pytest.mark.process

INTERVAL = 0.2
PEER_TIMEOUT = 1.0
LOCAL_BROADCAST = "127.255.255.255"


class Mesh:
    """The nodes of one test, all on the test's own discovery port; every one is killed at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_udp_port()
        self.nodes: list[MeshNode] = []

    def spawn(
        self,
        name: str,
        *args: str,
        interval: float = INTERVAL,
        timeout: float = PEER_TIMEOUT,
        data_dir: Path | None = None,
    ) -> MeshNode:
        """Start a node without waiting; its data dir is tmp_path/<name> unless given."""
        argv = [
            "--discovery-port",
            str(self.port),
            "--heartbeat-interval",
            f"{interval}s",
            "--peer-timeout",
            f"{timeout}s",
            "--data-dir",
            str(data_dir or self.tmp_path / name),
            *args,
        ]
        if "--api-port" not in argv:
            argv += ["--api-port", "0"]
        node = MeshNode(f"{name}-{len(self.nodes)}", argv, self.tmp_path / "logs")
        self.nodes.append(node)
        return node.start()

    def start(self, *names: str, **options: float) -> list[MeshNode]:
        """Start nodes side by side and wait until each has logged node_started."""
        nodes = [self.spawn(name, **options) for name in names]  # type: ignore[arg-type]
        return [node.wait_started() for node in nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    group = Mesh(tmp_path)
    yield group
    group.close()


def wait_all_see_all(nodes: list[MeshNode], timeout: float = 10.0) -> float:
    return wait_until(lambda: all_see_all(nodes), timeout, "every node to list all the others")


def entries(observer: MeshNode, node_id: str) -> list[dict]:
    """Every entry (live, failed or left) `observer` holds for `node_id`."""
    return [peer for peer in observer.peers(include_all=True) if peer["node_id"] == node_id]


def dropped_as(observer: MeshNode, node_id: str, state: str) -> bool:
    """True when `observer` no longer lists `node_id` as live and shows it as `state` in ?all=true."""
    return node_id not in observer.peer_ids() and [p["status"] for p in entries(observer, node_id)] == [state]


def test_three_nodes_on_one_host_find_each_other_and_none_lists_itself(mesh: Mesh) -> None:
    nodes = mesh.start("a", "b", "c")

    wait_all_see_all(nodes)

    for node in nodes:
        others = {other.node_id: other for other in nodes if other is not node}
        listed = node.peers()
        assert sorted(peer["node_id"] for peer in listed) == sorted(others)
        for peer in listed:
            other = others[peer["node_id"]]
            assert peer["api_url"] == other.api_url
            assert peer["address"].startswith("127.0.0.1:")
            assert peer["status"] == "IDLE"
            assert peer["incarnation"] == other.incarnation
            assert peer["metadata"]["pid"] == str(other.pid)
        assert node.status()["peers"]["alive"] == 2


def test_a_node_joining_a_mesh_with_a_five_second_interval_is_seen_by_all_within_one_second(
    mesh: Mesh,
) -> None:
    slow = {"interval": 5.0, "timeout": 15.0}
    first = mesh.start("a", "b", **slow)
    wait_all_see_all(first)

    newcomer = mesh.start("c", **slow)[0]
    nodes = [*first, newcomer]
    wait_all_see_all(nodes, timeout=5.0)
    took = time.time() - log_time(newcomer.started_line() or {})

    print(f"\nfast join: every node lists all others {took:.3f}s after the newcomer's node_started")
    assert took < 1.0, f"the mesh took {took:.3f}s to learn the newcomer (interval 5s)"


def test_a_node_killed_with_sigkill_is_marked_failed_by_the_others_within_peer_timeout_plus_one_interval(
    mesh: Mesh,
) -> None:
    a, b, victim = nodes = mesh.start("a", "b", "victim")
    wait_all_see_all(nodes)

    victim.kill()
    took = wait_until(
        lambda: all(dropped_as(node, victim.node_id, "FAILED") for node in (a, b)),
        PEER_TIMEOUT + 5 * INTERVAL + 3,
        "both survivors to list the killed node as FAILED only",
    )

    print(f"\nkill -9 noticed by both survivors after {took:.3f}s (limit {PEER_TIMEOUT + INTERVAL}s)")
    assert took <= PEER_TIMEOUT + INTERVAL
    # It was heard at most one interval before the kill, so it cannot fail much sooner than that.
    assert took >= PEER_TIMEOUT - INTERVAL - 0.05
    for node in (a, b):
        assert node.peer_ids() == {({a, b} - {node}).pop().node_id}
        failed = [line for line in node.events("peer_failed") if line["peer_id"] == victim.node_id]
        assert len(failed) == 1
        assert entries(node, victim.node_id)[0]["last_seen_seconds_ago"] >= PEER_TIMEOUT


def test_a_node_stopped_with_sigterm_is_dropped_by_the_others_within_half_a_second_as_left(
    mesh: Mesh,
) -> None:
    # A long peer timeout: only the leave notice can explain a drop within half a second.
    a, b, leaver = nodes = mesh.start("a", "b", "leaver", timeout=10.0)
    wait_all_see_all(nodes)

    leaver.terminate()
    took = wait_until(
        lambda: all(dropped_as(node, leaver.node_id, "LEFT") for node in (a, b)),
        5.0,
        "both survivors to list the stopped node as LEFT only",
    )

    print(f"\nSIGTERM noticed by both survivors after {took:.3f}s")
    assert took <= 0.5
    assert leaver.wait() == 0
    assert [line["reason"] for line in leaver.events("leave_sent")] == ["stopping"]
    for node in (a, b):
        assert [line["peer_id"] for line in node.events("peer_left")] == [leaver.node_id]
        assert node.status()["peers"]["left"] == 1


def test_a_node_restarted_with_the_same_id_and_data_dir_is_back_with_a_higher_incarnation_and_no_duplicate(
    mesh: Mesh, tmp_path: Path
) -> None:
    same = ("--node-id", "phoenix")
    a, b = mesh.start("a", "b")
    phoenix = mesh.spawn("phoenix", *same, data_dir=tmp_path / "phoenix").wait_started()
    wait_all_see_all([a, b, phoenix])
    phoenix.terminate()
    assert phoenix.wait() == 0
    wait_until(lambda: all(dropped_as(n, "phoenix", "LEFT") for n in (a, b)), 5.0, "phoenix to be LEFT")

    again = mesh.spawn("phoenix", *same, data_dir=tmp_path / "phoenix").wait_started()
    wait_all_see_all([a, b, again])

    assert again.node_id == "phoenix"
    assert again.incarnation > phoenix.incarnation
    for node in (a, b):
        [entry] = entries(node, "phoenix")
        assert entry["status"] == "IDLE"
        assert entry["incarnation"] == again.incarnation
        assert entry["api_url"] == again.api_url
        counts = node.status()["peers"]
        assert (counts["alive"], counts["left"], counts["failed"]) == (2, 0, 0)


def test_a_node_killed_and_restarted_before_it_expires_replaces_its_old_entry_at_once(
    mesh: Mesh, tmp_path: Path
) -> None:
    # A long peer timeout: the old entry is still ALIVE when the new incarnation is heard.
    a = mesh.start("a", timeout=10.0)[0]
    first = mesh.spawn(
        "phoenix", "--node-id", "phoenix", timeout=10.0, data_dir=tmp_path / "p"
    ).wait_started()
    wait_all_see_all([a, first])

    first.kill()
    again = mesh.spawn(
        "phoenix", "--node-id", "phoenix", timeout=10.0, data_dir=tmp_path / "p"
    ).wait_started()
    wait_until(
        lambda: [e["incarnation"] for e in entries(a, "phoenix")] == [again.incarnation],
        3.0,
        "a to hold exactly one entry for phoenix, of the new incarnation",
    )

    assert again.incarnation > first.incarnation
    assert [(e["status"], e["api_url"]) for e in a.peers()] == [("IDLE", again.api_url)]
    assert [line["incarnation"] for line in a.events("peer_restarted")] == [again.incarnation]


def test_a_node_restarted_with_a_new_id_on_the_same_api_port_leaves_no_live_entry_for_the_old_id(
    mesh: Mesh,
) -> None:
    port = str(free_port())
    # A long peer timeout: expiry cannot be what removes the old id during this test.
    a = mesh.start("a", timeout=10.0)[0]
    old = mesh.spawn("old", "--api-port", port, timeout=10.0).wait_started()
    wait_all_see_all([a, old])

    old.kill()  # no leave notice: only its heartbeats stop
    new = mesh.spawn("new", "--api-port", port, timeout=10.0).wait_started()
    assert new.node_id != old.node_id
    wait_until(lambda: new.node_id in a.peer_ids(), 3.0, "a to list the new node")

    assert a.peer_ids() == {new.node_id}
    assert [e["status"] for e in entries(a, old.node_id)] == ["LEFT"]


def broadcast(datagrams: list[bytes], port: int) -> None:
    """Send each datagram to the host-local broadcast address on `port`, in order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for data in datagrams:
            sock.sendto(data, (LOCAL_BROADCAST, port))


def fake_heartbeat(node_id: str, api_port: int) -> bytes:
    env = wire.envelope(node_id, 7, 1)
    env.heartbeat.node_id = node_id
    env.heartbeat.status = pb.IDLE
    env.heartbeat.api_port = api_port
    env.heartbeat.capacity = 1
    env.heartbeat.version = "fake"
    return wire.encode(env)


def test_garbage_datagrams_are_dropped_and_counted_by_reason_and_a_valid_heartbeat_after_them_is_heard(
    mesh: Mesh,
) -> None:
    node = mesh.start("a")[0]
    valid = fake_heartbeat("fake-node", 1)
    no_sender = wire.envelope("", 1, 1)
    no_sender.heartbeat.status = pb.IDLE
    rng = random.Random(3)
    noise = b"\x00" + bytes(rng.randrange(256) for _ in range(99))  # cannot start with b"WM"
    expected = {
        "empty": [b"", b""],  # the second of a kind is counted but not logged at WARNING again
        "bad_magic": [noise],
        "malformed": [wire.PREFIX + valid[len(wire.PREFIX) : len(wire.PREFIX) + 6]],
        "no_sender": [wire.PREFIX + no_sender.SerializeToString()],
        "too_large": [wire.PREFIX + bytes(wire.MAX_DATAGRAM + 100)],
        "unknown_version": [b"WM\x02\x00" + valid[len(wire.PREFIX) :]],
    }
    fake_port = free_port()

    broadcast([data for batch in expected.values() for data in batch], mesh.port)
    broadcast([fake_heartbeat("fake-node", fake_port)], mesh.port)
    wait_until(lambda: "fake-node" in node.peer_ids(), 3.0, "the fake node to be listed")

    assert node.alive()
    assert node.answers()
    [fake] = [peer for peer in node.peers() if peer["node_id"] == "fake-node"]
    assert fake["api_url"] == f"http://127.0.0.1:{fake_port}/api/v1"
    assert (fake["status"], fake["incarnation"], fake["version"]) == ("IDLE", 7, "fake")
    dropped = node.status()["discovery"]["dropped"]
    assert {reason: count for reason, count in dropped.items() if count} == {
        reason: len(batch) for reason, batch in expected.items()
    }
    warnings = [line for line in node.events("datagram_dropped") if line["level"] == "warning"]
    assert sorted(line["reason"] for line in warnings) == sorted(expected)
    assert {line["source"] for line in warnings} == {"127.0.0.1"}


def run_node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """run_node.py to its end (it must not start: each call here holds one bad setting)."""
    return subprocess.run(
        [sys.executable, str(RUN_NODE), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(done.stderr.splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr
    assert done.stdout == ""


@pytest.fixture
def safe_args(tmp_path: Path) -> list[str]:
    """Options that keep a node that wrongly starts off every shared port and directory."""
    return ["--api-port", "0", "--data-dir", str(tmp_path / "never")]


def test_a_peer_timeout_in_the_environment_that_is_not_a_duration_exits_2_with_one_line(
    safe_args: list[str],
) -> None:
    done = run_node(*safe_args, "--discovery-port", str(free_udp_port()), env={"PEER_TIMEOUT": "abc"})

    assert_refused(done, "PEER_TIMEOUT", "abc")


def test_a_peer_timeout_shorter_than_two_heartbeat_intervals_exits_2_with_one_line(
    safe_args: list[str],
) -> None:
    done = run_node(
        *safe_args,
        "--discovery-port",
        str(free_udp_port()),
        "--heartbeat-interval",
        "1s",
        "--peer-timeout",
        "1.5s",
    )

    assert_refused(done, "--peer-timeout")


@pytest.mark.parametrize("port", ["0", "70000", "abc"])
def test_a_discovery_port_out_of_range_exits_2_with_one_line(safe_args: list[str], port: str) -> None:
    done = run_node(*safe_args, "--discovery-port", port)

    assert_refused(done, "--discovery-port", port)


def test_a_discovery_port_out_of_range_in_the_environment_exits_2_with_one_line(safe_args: list[str]) -> None:
    done = run_node(*safe_args, env={"DISCOVERY_PORT": "70000"})

    assert_refused(done, "DISCOVERY_PORT", "70000")


@pytest.mark.parametrize(("goodbye", "state"), [("terminate", "LEFT"), ("kill", "FAILED")])
def test_a_peer_that_had_left_or_failed_is_not_listed_as_live_after_the_observer_restarts(
    mesh: Mesh, tmp_path: Path, goodbye: str, state: str
) -> None:
    # The observer's peer timeout is long enough that a wrongly revived entry is still listed
    # when the observer's API first answers after its restart.
    observer = mesh.spawn("observer", timeout=3.0, data_dir=tmp_path / "observer").wait_started()
    gone = mesh.start("gone")[0]
    wait_all_see_all([observer, gone])
    getattr(gone, goodbye)()
    wait_until(lambda: dropped_as(observer, gone.node_id, state), 10.0, f"the observer to list it {state}")
    observer.terminate()
    assert observer.wait() == 0

    again = mesh.spawn("observer", timeout=3.0, data_dir=tmp_path / "observer").wait_started()

    assert again.node_id == observer.node_id
    assert gone.node_id not in again.peer_ids(), again.peers()


def test_a_peer_remembered_from_before_a_restart_is_unconfirmed_until_it_expires_as_failed(
    mesh: Mesh, tmp_path: Path
) -> None:
    observer = mesh.spawn("observer", timeout=2.0, data_dir=tmp_path / "observer").wait_started()
    peer = mesh.start("peer")[0]
    wait_all_see_all([observer, peer])
    observer.terminate()
    assert observer.wait() == 0
    peer.kill()  # gone while the observer was down: never heard again

    again = mesh.spawn("observer", timeout=2.0, data_dir=tmp_path / "observer").wait_started()
    assert [(p["node_id"], p["status"]) for p in again.peers()] == [(peer.node_id, "UNCONFIRMED")]
    took = wait_until(lambda: dropped_as(again, peer.node_id, "FAILED"), 5.0, "the unconfirmed peer to fail")

    print(f"\nunconfirmed peer failed {took:.3f}s after the restarted observer answered")
    assert took <= 2.0 + INTERVAL


def test_a_node_that_becomes_busy_is_listed_busy_by_its_peers_long_before_the_next_heartbeat(
    mesh: Mesh,
) -> None:
    slow = {"interval": 5.0, "timeout": 15.0}
    watcher = mesh.start("watcher", **slow)[0]
    worker = mesh.spawn("worker", "--max-jobs", "1", **slow).wait_started()  # type: ignore[arg-type]
    wait_all_see_all([watcher, worker])

    # Pinned: otherwise routing may well send it to the idle watcher.
    worker.post("/jobs", {"command": "sleep 30", "target_node": worker.node_id})
    took = wait_until(
        lambda: [p["status"] for p in watcher.peers()] == ["BUSY"], 3.0, "the watcher to list the worker BUSY"
    )

    print(f"\nBUSY seen by the peer {took:.3f}s after the job was accepted (interval 5s)")
    assert took < 0.5
    [entry] = watcher.peers()
    assert (entry["running"], entry["capacity"]) == (1, 1)
