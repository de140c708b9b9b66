"""Pure unit tests of the peer table: a fake clock, no threads, no sockets."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from actors.peer_table import PeerState, PeerTable
from proto.codec import pb
from proto.wire import Heartbeat

WALL = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
TIMEOUT = 30.0


def heartbeat(
    node_id: str = "node-b", incarnation: int = 1, api_port: int = 3002, **fields: object
) -> Heartbeat:
    base = Heartbeat(
        node_id=node_id,
        incarnation=incarnation,
        host="127.0.0.1",
        mesh_port=40000,
        api_port=api_port,
        status=pb.IDLE,
        running=0,
        queued=0,
        capacity=2,
        version="0.1.0",
    )
    return replace(base, **fields)


def table() -> PeerTable:
    return PeerTable("node-a", TIMEOUT)


def kinds(events: list) -> list[str]:
    return [event.kind for event in events]


def test_a_heartbeat_from_a_new_node_adds_it_alive_and_reports_a_join() -> None:
    peers = table()
    assert kinds(peers.observe(heartbeat(), 100.0, WALL)) == ["joined"]
    assert [p.node_id for p in peers.peers()] == ["node-b"]
    assert peers.get("node-b").state is PeerState.ALIVE


def test_the_node_never_lists_itself() -> None:
    peers = table()
    assert peers.observe(heartbeat(node_id="node-a"), 100.0, WALL) == []
    assert peers.peers(include_all=True) == []


def test_a_refresh_changes_nothing_visible_but_keeps_the_peer_alive() -> None:
    peers = table()
    peers.observe(heartbeat(), 0.0, WALL)
    for t in range(10, 300, 10):
        assert peers.observe(heartbeat(running=1), float(t), WALL) == []
        assert peers.expire(float(t) + 1) == []
    assert peers.get("node-b").heartbeat.running == 1


def test_a_silent_peer_fails_after_the_timeout_and_only_then() -> None:
    peers = table()
    peers.observe(heartbeat(), 0.0, WALL)
    assert peers.expire(TIMEOUT) == []
    assert kinds(peers.expire(TIMEOUT + 0.01)) == ["failed"]
    assert peers.peers() == []
    assert peers.get("node-b").state is PeerState.FAILED
    assert [p.node_id for p in peers.peers(include_all=True)] == ["node-b"]


def test_a_failed_peer_heard_again_recovers() -> None:
    peers = table()
    peers.observe(heartbeat(), 0.0, WALL)
    peers.expire(100.0)
    assert kinds(peers.observe(heartbeat(), 101.0, WALL)) == ["recovered"]
    assert peers.get("node-b").state is PeerState.ALIVE


def test_a_leave_notice_drops_the_peer_at_once_and_a_late_heartbeat_does_not_bring_it_back() -> None:
    peers = table()
    peers.observe(heartbeat(), 0.0, WALL)
    assert kinds(peers.leave("node-b", 1, 1.0, WALL)) == ["left"]
    assert peers.peers() == []
    assert peers.observe(heartbeat(), 1.1, WALL) == []  # overtaken by the leave notice
    assert peers.get("node-b").state is PeerState.LEFT


def test_a_restarted_node_with_a_higher_incarnation_replaces_its_old_entry_at_once() -> None:
    peers = table()
    peers.observe(heartbeat(incarnation=5), 0.0, WALL)
    peers.leave("node-b", 5, 1.0, WALL)
    assert kinds(peers.observe(heartbeat(incarnation=6), 2.0, WALL)) == ["restarted"]
    assert peers.get("node-b").heartbeat.incarnation == 6
    assert len(peers.peers()) == 1


def test_a_late_heartbeat_from_an_older_incarnation_never_overwrites_a_newer_one() -> None:
    peers = table()
    peers.observe(heartbeat(incarnation=6, running=1), 0.0, WALL)
    assert peers.observe(heartbeat(incarnation=5, running=9), 1.0, WALL) == []
    assert peers.get("node-b").heartbeat.running == 1
    assert peers.stale_heartbeats == 1
    # ...and it does not count as hearing from the node: expiry still runs from the last real one.
    assert kinds(peers.expire(TIMEOUT + 0.5)) == ["failed"]


def test_a_leave_of_an_older_incarnation_is_ignored() -> None:
    peers = table()
    peers.observe(heartbeat(incarnation=6), 0.0, WALL)
    assert peers.leave("node-b", 5, 1.0, WALL) == []
    assert peers.get("node-b").state is PeerState.ALIVE


def test_a_new_id_at_the_same_address_replaces_the_old_entry() -> None:
    peers = table()
    peers.observe(heartbeat(node_id="node-old"), 0.0, WALL)
    events = peers.observe(heartbeat(node_id="node-new"), 5.0, WALL)
    assert kinds(events) == ["replaced", "joined"]
    assert [p.node_id for p in peers.peers()] == ["node-new"]


def test_peers_on_other_hosts_with_the_same_api_port_are_distinct() -> None:
    peers = table()
    peers.observe(heartbeat(node_id="node-x", host="10.0.0.2"), 0.0, WALL)
    peers.observe(heartbeat(node_id="node-y", host="10.0.0.3"), 0.0, WALL)
    assert len(peers.peers()) == 2


def test_sender_clocks_a_day_ahead_do_not_keep_a_silent_peer_alive() -> None:
    # The table never sees the sender's clock: only when the receiver heard it.
    peers = table()
    peers.observe(heartbeat(), 0.0, WALL + timedelta(days=1))
    assert kinds(peers.expire(TIMEOUT + 0.01)) == ["failed"]


def test_sender_clocks_an_hour_behind_do_not_expire_a_peer_that_keeps_talking() -> None:
    peers = table()
    for t in range(0, 600, 5):
        peers.observe(heartbeat(), float(t), WALL - timedelta(hours=1))
        assert peers.expire(float(t) + 4.9) == []
    assert peers.get("node-b").state is PeerState.ALIVE


def test_peers_remembered_from_disk_are_unconfirmed_until_heard_and_then_expire() -> None:
    peers = table()
    peers.load(heartbeat(), WALL - timedelta(hours=2), 0.0)
    assert peers.get("node-b").state is PeerState.UNCONFIRMED
    assert [p.node_id for p in peers.peers()] == ["node-b"]
    assert kinds(peers.expire(TIMEOUT + 1)) == ["failed"]


def test_an_unconfirmed_peer_heard_again_is_confirmed() -> None:
    peers = table()
    peers.load(heartbeat(), WALL, 0.0)
    assert kinds(peers.observe(heartbeat(), 1.0, WALL)) == ["joined"]
    assert peers.get("node-b").state is PeerState.ALIVE


def test_long_dead_entries_are_forgotten() -> None:
    peers = PeerTable("node-a", TIMEOUT, forget_after=600.0)
    peers.observe(heartbeat(), 0.0, WALL)
    peers.expire(31.0)
    peers.expire(700.0)
    assert peers.peers(include_all=True) == []


def test_counts_by_state() -> None:
    peers = table()
    peers.observe(heartbeat(node_id="node-b", api_port=1), 0.0, WALL)
    peers.observe(heartbeat(node_id="node-c", api_port=2), 0.0, WALL)
    peers.leave("node-c", 1, 1.0, WALL)
    assert peers.counts() == {"alive": 1, "unconfirmed": 0, "failed": 0, "left": 1}


def test_peers_remembered_as_failed_or_left_are_not_listed_as_live_after_a_restart() -> None:
    peers = table()
    peers.load(heartbeat(node_id="node-b", api_port=1), WALL, 0.0, "LEFT")
    peers.load(heartbeat(node_id="node-c", api_port=2), WALL, 0.0, "FAILED")
    assert peers.peers() == []
    assert {p.node_id: p.state for p in peers.peers(include_all=True)} == {
        "node-b": PeerState.LEFT,
        "node-c": PeerState.FAILED,
    }
