"""Discovery across hosts: three network namespaces on a bridge, one node each (../shared/netns-lab.md).

The lab's names and its 10.x.y.0/24 subnet come from this process's pid, so two runs never collide.
Nodes broadcast on the lab's subnet on the default discovery port (each namespace has its own port
space); their APIs listen on each namespace's own loopback and are asked from inside it. Nothing
is ever sent from the host's namespace to a lab address. The lab is torn down whatever happens.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proto.seal import generate_key
from tests.meshnodes import MeshNode, all_see_all, wait_until

INTERVAL = 0.2
PEER_TIMEOUT = 1.0
HOSTS = 3

pytestmark = [
    pytest.mark.lan,
    pytest.mark.skipif(
        shutil.which("ip") is None, reason="needs iproute2's `ip` to build network namespaces"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and a bridge"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class Host:
    netns: str
    veth: str  # the host-side end, on the bridge: pulling it down cuts this host off
    address: str
    node: MeshNode


class Lan:
    """A bridge and three namespaces with one node each; `close()` removes everything it made."""

    def __init__(self, tmp_path: Path) -> None:
        pid = os.getpid()
        self.tag = f"wm{pid}"
        self.bridge = f"br{self.tag}"
        self.network = ipaddress.IPv4Network(f"10.{pid // 256 % 200 + 20}.{pid % 256}.0/24")
        self.tmp_path = tmp_path
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.bridge_made = False

    def build(self) -> None:
        self.key_file = self.tmp_path / "mesh.key"
        self.key_file.write_text(generate_key() + "\n")
        ip("link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        ip("link", "set", self.bridge, "up")
        for i in range(1, HOSTS + 1):
            netns, veth, address = f"{self.tag}-{i}", f"v{self.tag}{i}", str(self.network[i + 1])
            ip("netns", "add", netns)
            self.namespaces.append(netns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", netns, "addr", "add", f"{address}/{self.network.prefixlen}", "brd", "+", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")
            node = MeshNode(f"host{i}", self.node_args(i), self.tmp_path / "logs", netns=netns)
            self.hosts.append(Host(netns, veth, address, node))
        for host in self.hosts:
            host.node.start()
        for host in self.hosts:
            host.node.wait_started()

    def node_args(self, i: int) -> list[str]:
        return [
            "--api-host",
            "127.0.0.1",
            "--api-port",
            "3000",
            "--broadcast",
            str(self.network.broadcast_address),
            "--heartbeat-interval",
            f"{INTERVAL}s",
            "--peer-timeout",
            f"{PEER_TIMEOUT}s",
            "--data-dir",
            str(self.tmp_path / f"host{i}"),
            "--key-file",  # a LAN mesh needs a key
            str(self.key_file),
        ]

    @property
    def nodes(self) -> list[MeshNode]:
        return [host.node for host in self.hosts]

    def close(self) -> None:
        for host in self.hosts:
            host.node.kill()
        for netns in self.namespaces:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True, timeout=20)
        if self.bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True, timeout=20)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    lab = Lan(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def status_of(observer: MeshNode, node_id: str) -> str | None:
    """How `observer` lists `node_id` in ?all=true (None when it does not know it)."""
    try:
        found = [peer["status"] for peer in observer.peers(include_all=True) if peer["node_id"] == node_id]
    except (OSError, ValueError):
        return None
    return found[0] if found else None


def test_nodes_on_three_hosts_find_each_other_by_broadcast_with_addresses_in_their_subnet(lan: Lan) -> None:
    took = wait_until(lambda: all_see_all(lan.nodes), 15.0, "every host's node to list the other two")
    print(f"\nthree hosts listed each other {took:.3f}s after all three had started")

    by_id = {host.node.node_id: host for host in lan.hosts}
    for host in lan.hosts:
        for peer in host.node.peers():
            other = by_id[peer["node_id"]]
            peer_host = peer["address"].rpartition(":")[0]
            assert ipaddress.IPv4Address(peer_host) in lan.network
            assert peer_host == other.address
            assert peer["api_url"] == f"http://{other.address}:3000/api/v1"
            assert peer["status"] == "IDLE"
        discovery = host.node.status()["discovery"]
        assert discovery["broadcast"] == [str(lan.network.broadcast_address)]
        assert discovery["port"] == 8080
        assert discovery["send_errors"] == 0


def test_a_host_cut_off_from_the_bridge_is_marked_failed_by_the_others_and_rejoins_when_restored(
    lan: Lan,
) -> None:
    wait_until(lambda: all_see_all(lan.nodes), 15.0, "every host's node to list the other two")
    *others, cut = lan.hosts
    cut_id = cut.node.node_id
    incarnation = cut.node.incarnation

    ip("link", "set", cut.veth, "down")
    took = wait_until(
        lambda: all(status_of(host.node, cut_id) == "FAILED" for host in others),
        PEER_TIMEOUT + 10 * INTERVAL + 5,
        "the other two hosts to list the cut-off node as FAILED",
    )
    print(f"\ncut-off host marked FAILED by both others after {took:.3f}s")
    assert all(host.node.peer_ids() == {o.node.node_id for o in others if o is not host} for host in others)
    wait_until(
        lambda: cut.node.peer_ids() == set(),
        PEER_TIMEOUT + 10 * INTERVAL + 5,
        "the cut-off node to list nobody",
    )

    ip("link", "set", cut.veth, "up")
    back = wait_until(lambda: all_see_all(lan.nodes), 15.0, "the cut-off host to rejoin")
    print(f"restored host rejoined after {back:.3f}s")

    assert cut.node.alive()
    for host in others:
        [entry] = [peer for peer in host.node.peers() if peer["node_id"] == cut_id]
        assert (entry["status"], entry["incarnation"]) == ("IDLE", incarnation)
        assert [line["peer_id"] for line in host.node.events("peer_failed")] == [cut_id]
        assert [line["peer_id"] for line in host.node.events("peer_recovered")] == [cut_id]
