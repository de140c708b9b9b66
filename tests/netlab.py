"""A LAN of our own (../shared/netns-lab.md): a bridge and N network namespaces, one node each.

Names and the 10.x.y.0/24 subnet come from a tag and this process's pid, so two runs never collide.
Nodes listen on their namespace's own address and loopback; their APIs are asked from inside the
namespace (MeshNode with `netns=`). Nothing is sent from the host's namespace to a lab address.
`close()` removes every namespace and the bridge it made, whatever happened before.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.meshnodes import MeshNode

needs_root_and_ip = [
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


class Lab:
    """`hosts` namespaces on one bridge; `node_args(i, address)` gives host i's run_node.py flags."""

    def __init__(
        self, tmp_path: Path, tag: str, hosts: int, node_args: Callable[[int, str], list[str]]
    ) -> None:
        pid = os.getpid()
        self.tag = f"{tag}{pid}"
        self.bridge = f"br{self.tag}"
        # 10.220-249.y from the pid: concurrent runs are unlikely to meet; one run tears each lab down.
        self.network = ipaddress.IPv4Network(f"10.{220 + pid % 30}.{pid // 30 % 256}.0/24")
        self.tmp_path = tmp_path
        self.count = hosts
        self.node_args = node_args
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.bridge_made = False

    @property
    def broadcast(self) -> str:
        return str(self.network.broadcast_address)

    def build(self) -> Lab:
        """Make the bridge and namespaces and start one node in each (waits for node_started)."""
        ip("link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            netns, veth, address = f"{self.tag}-{i}", f"v{self.tag}{i}", str(self.network[i + 1])
            ip("netns", "add", netns)
            self.namespaces.append(netns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", netns, "addr", "add", f"{address}/{self.network.prefixlen}", "brd", "+", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")
            node = MeshNode(f"host{i}", self.node_args(i, address), self.tmp_path / "logs", netns=netns)
            self.hosts.append(Host(netns, veth, address, node))
        for host in self.hosts:
            host.node.start()
        for host in self.hosts:
            host.node.wait_started()
        return self

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
