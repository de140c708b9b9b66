"""DiscoveryActor + PeerRegistryActor over an in-memory network: no sockets, long intervals, so
everything seen here comes from start-up, replies, status changes and leave notices."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.config import NodeConfig, Timing
from actors.discovery import DiscoveryActor
from actors.messages import (
    AddPeerListener,
    AnnounceLeave,
    GetDiscoveryStats,
    ListPeers,
    Load,
    LoadChanged,
    StartAnnouncing,
)
from actors.peers import PeerRegistryActor
from actors.transport import MemoryNetwork, MemoryTransport
from proto import wire
from proto.codec import pb
from proto.seal import KeyHolder, Keyring
from tests.helpers import wait_for

SLOW = Timing(heartbeat_interval=60.0, peer_timeout=180.0)


@dataclass
class Member:
    node_id: str
    registry: pykka.ActorRef[Any]
    discovery: pykka.ActorRef[Any]
    transport: MemoryTransport

    def peers(self, include_all: bool = False) -> list[Any]:
        return self.registry.ask(ListPeers(include_all), timeout=5)

    def peer_ids(self) -> list[str]:
        return [p.node_id for p in self.peers()]

    def stats(self) -> dict[str, Any]:
        return self.discovery.ask(GetDiscoveryStats(), timeout=5)


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


@pytest.fixture
def members(network: MemoryNetwork) -> Iterator[Any]:
    started: list[Member] = []

    def join(node_id: str, api_port: int, max_jobs: int = 2, announce: bool = True) -> Member:
        config = NodeConfig(data_dir=Path("/nonexistent"), max_jobs=max_jobs, timing=SLOW)
        registry = PeerRegistryActor.start(node_id, SLOW.peer_timeout, None)
        transport = network.transport()
        discovery = DiscoveryActor.start(config, node_id, 1, registry, transport)
        registry.tell(AddPeerListener(discovery))
        if announce:
            discovery.tell(StartAnnouncing(api_port=api_port))
        member = Member(node_id, registry, discovery, transport)
        started.append(member)
        return member

    yield join
    for member in started:
        for ref in (member.discovery, member.registry):
            ref.stop()


def test_a_newcomer_and_the_mesh_learn_of_each_other_without_waiting_for_an_interval(members: Any) -> None:
    a = members("node-a", 3001)
    b = members("node-b", 3002)
    c = members("node-c", 3003)
    for member, others in ((a, ["node-b", "node-c"]), (b, ["node-a", "node-c"]), (c, ["node-a", "node-b"])):
        wait_for(lambda m=member, o=others: m.peer_ids() == o, 2.0, what=f"{member.node_id} to see {others}")


def test_a_status_change_is_announced_at_once(members: Any) -> None:
    a = members("node-a", 3001)
    b = members("node-b", 3002, max_jobs=1)
    wait_for(lambda: a.peer_ids() == ["node-b"], 2.0)
    b.discovery.tell(LoadChanged(Load(running=1, queued=3, capacity=1)))
    seen = wait_for(lambda: [p for p in a.peers() if p.heartbeat.status == pb.BUSY], 2.0, what="BUSY")
    assert (seen[0].heartbeat.running, seen[0].heartbeat.queued) == (1, 3)


def test_a_leave_notice_drops_the_node_from_its_peers_lists(members: Any) -> None:
    a = members("node-a", 3001)
    b = members("node-b", 3002)
    wait_for(lambda: a.peer_ids() == ["node-b"], 2.0)
    b.discovery.ask(AnnounceLeave(), timeout=5)
    wait_for(lambda: a.peer_ids() == [], 2.0, what="node-b to be dropped")
    assert [(p.node_id, p.state.value) for p in a.peers(include_all=True)] == [("node-b", "LEFT")]
    assert b.stats()["leaves_sent"] == 1


def test_garbage_is_counted_by_reason_and_a_valid_heartbeat_after_it_is_still_seen(members: Any) -> None:
    a = members("node-a", 3001)
    garbage = [
        b"",
        b"\x00" * 50,
        b"WM\x01\x00\x0a\x30truncated",
        wire.PREFIX + pb.Envelope(sequence=1).SerializeToString(),
        b"WM\x09\x00" + b"\x0a\x01x",
        b"x" * 9000,
    ]
    for data in garbage:
        a.transport.receive(data, "127.0.0.9")
    env = wire.envelope("node-z", 1, 1)
    env.heartbeat.status = pb.IDLE
    env.heartbeat.api_port = 3009
    a.transport.receive(wire.encode(env), "127.0.0.9")
    wait_for(lambda: a.peer_ids() == ["node-z"], 2.0, what="the valid heartbeat after the garbage")
    dropped = a.stats()["dropped"]
    assert {k: v for k, v in dropped.items() if v} == {
        "empty": 1,
        "bad_magic": 1,
        "malformed": 1,
        "no_sender": 1,
        "unknown_version": 1,
        "too_large": 1,
    }
    assert a.discovery.is_alive()


def test_own_heartbeats_looped_back_are_ignored(members: Any) -> None:
    a = members("node-a", 3001)
    wait_for(lambda: a.stats()["heartbeats_sent"] >= 1, 2.0)
    assert a.peers(include_all=True) == []
    assert sum(a.stats()["dropped"].values()) == 0


def test_a_node_that_has_not_started_announcing_is_silent(members: Any, network: MemoryNetwork) -> None:
    quiet = members("node-q", 3005, announce=False)
    a = members("node-a", 3001)
    wait_for(lambda: quiet.peer_ids() == ["node-a"], 2.0, what="the quiet node to hear node-a")
    assert quiet.transport.sent == []
    assert a.peer_ids() == []


def test_an_unsealed_node_ignores_heartbeats_from_beyond_its_host(members: Any) -> None:
    # Out of the box the mesh is this host only: a LAN host's unicast heartbeat must not join it.
    a = members("node-a", 3001)
    env = wire.envelope("node-lan", 1, 1)
    env.heartbeat.status = pb.IDLE
    env.heartbeat.api_port = 3009
    a.transport.receive(wire.encode(env), "192.0.2.7")
    wait_for(lambda: a.stats()["dropped"]["not_local"] == 1, 2.0, what="the datagram to be dropped")
    assert a.peers(include_all=True) == []


def test_a_sealed_node_takes_heartbeats_from_other_hosts_with_its_key(network: MemoryNetwork) -> None:
    keys = KeyHolder(Keyring([os.urandom(32)]))
    config = NodeConfig(data_dir=Path("/nonexistent"), timing=SLOW)
    registry = PeerRegistryActor.start("node-a", SLOW.peer_timeout, None)
    channel = wire.Channel("node-a", 1, keys)
    discovery = DiscoveryActor.start(config, "node-a", 1, registry, network.transport(), channel)
    try:
        sender = wire.Channel("node-lan", 1, keys)
        env = sender.envelope()
        env.heartbeat.status = pb.IDLE
        env.heartbeat.api_port = 3009
        network.deliver(sender.datagram(env), "192.0.2.7")
        seen = wait_for(lambda: registry.ask(ListPeers(), timeout=5), 2.0, what="the LAN peer")
        assert [(p.node_id, p.heartbeat.host) for p in seen] == [("node-lan", "192.0.2.7")]
    finally:
        discovery.stop()
        registry.stop()
