"""Discovery across hosts: three network namespaces on a bridge, one node each (../shared/netns-lab.md).

The lab's names and its 10.x.y.0/24 subnet come from this process's pid, so two runs never collide.
Nodes broadcast on the lab's subnet on the default discovery port (each namespace has its own port
space); their APIs listen on each namespace's own loopback and are asked from inside it. Nothing
is ever sent from the host's namespace to a lab address. The lab is torn down whatever happens.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from proto.seal import generate_key
from tests.meshnodes import MeshNode, all_see_all, wait_until
from tests.netlab import Lab, ip, needs_root_and_ip

INTERVAL = 0.2
PEER_TIMEOUT = 1.0
HOSTS = 3

pytestmark = needs_root_and_ip


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lab]:
    key_file = tmp_path / "mesh.key"  # a LAN mesh needs a key
    key_file.write_text(generate_key() + "\n")

    def node_args(i: int, _address: str) -> list[str]:
        return [
            *("--api-host", "127.0.0.1", "--api-port", "3000"),
            *("--broadcast", lab.broadcast, "--key-file", str(key_file)),
            *("--heartbeat-interval", f"{INTERVAL}s", "--peer-timeout", f"{PEER_TIMEOUT}s"),
            *("--data-dir", str(tmp_path / f"host{i}")),
        ]

    lab = Lab(tmp_path, "wm", HOSTS, node_args)
    try:
        yield lab.build()
    finally:
        lab.close()


def status_of(observer: MeshNode, node_id: str) -> str | None:
    """How `observer` lists `node_id` in ?all=true (None when it does not know it)."""
    try:
        found = [peer["status"] for peer in observer.peers(include_all=True) if peer["node_id"] == node_id]
    except (OSError, ValueError):
        return None
    return found[0] if found else None


def test_nodes_on_three_hosts_find_each_other_by_broadcast_with_addresses_in_their_subnet(lan: Lab) -> None:
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
    lan: Lab,
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
