"""Jobs across three hosts: one node per network namespace on a bridge (tests/netlab.py).

Nodes find each other by broadcast on the lab's subnet, announce a mesh port on their namespace's
address and hand jobs to each other over it; each API listens on its namespace's loopback and is
asked from inside that namespace. The mesh is sealed with a key made for the test. Heartbeats every
0.2 s, peers fail after 1 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.meshjobs import (
    INTERVAL,
    PEER_TIMEOUT,
    finals,
    job_body,
    kill_job_groups,
    only_route_to,
    submit,
    submit_many,
    wait_nothing_unsettled,
    wait_status,
)
from tests.meshnodes import RUN_NODE, all_see_all, wait_until
from tests.netlab import Lab, needs_root_and_ip

pytestmark = needs_root_and_ip

SETTLE = PEER_TIMEOUT + 5.0


class JobLab(Lab):
    """Three hosts sharing a mesh key (a LAN mesh needs one); host 2 runs one job at a time (the
    failover test's executor), the others two."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, "wj", 3, self.args)
        self.pidfile = tmp_path / "job-pids"
        self.key_file = tmp_path / "mesh.key"
        keygen = subprocess.run([sys.executable, str(RUN_NODE), "keygen"], capture_output=True, check=True)
        self.key_file.write_bytes(keygen.stdout)

    def args(self, i: int, address: str) -> list[str]:
        return [
            "--api-host",
            "127.0.0.1",
            "--api-port",
            "3000",
            "--mesh-host",
            address,
            "--broadcast",
            self.broadcast,
            "--key-file",
            str(self.key_file),
            "--heartbeat-interval",
            f"{INTERVAL}s",
            "--peer-timeout",
            f"{PEER_TIMEOUT}s",
            "--max-jobs",
            "1" if i == 2 else "2",
            "--data-dir",
            str(self.tmp_path / f"host{i}"),
        ]

    def close(self) -> None:
        super().close()
        kill_job_groups(self.pidfile)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[JobLab]:
    made = JobLab(tmp_path)
    try:
        made.build()
        wait_until(lambda: all_see_all(made.nodes), 15.0, "every host's node to list the other two")
        yield made
    finally:
        made.close()


def test_peers_announce_mesh_addresses_on_their_own_host_and_thirty_jobs_spread_over_all_three(
    lab: JobLab,
) -> None:
    origin = lab.hosts[0].node
    for host in lab.hosts:
        for peer in host.node.peers():
            other = next(h for h in lab.hosts if h.node.node_id == peer["node_id"])
            assert peer["address"] == f"{other.address}:{other.node.mesh_address[1]}"

    submitted = submit_many(origin, [job_body("sleep 0.3; echo done") for _ in range(30)])
    finished = finals(origin, [s["job_id"] for s in submitted])

    ran = Counter(j["executor_node"] for j in finished)
    print(f"\nexecutors across hosts: {dict(ran)}")
    assert set(ran) == {host.node.node_id for host in lab.hosts}
    assert {(j["status"], j["stdout"]) for j in finished} == {("JOB_COMPLETED", "done\n")}


def test_a_killed_host_s_queued_jobs_complete_on_another_host_and_its_running_job_fails(lab: JobLab) -> None:
    origin, victim, spare = (host.node for host in lab.hosts)
    with only_route_to(origin, [spare]):  # so everything lands on the victim, unpinned
        running = submit(origin, f"echo $$ >> {lab.pidfile}; sleep 30")
        queued = [submit(origin, "echo moved") for _ in range(2)]
        assert {j["target_node"] for j in (running, *queued)} == {victim.node_id}
    wait_status(origin, running["job_id"], {"JOB_RUNNING"}, 10)
    for waiting in queued:
        wait_status(victim, waiting["job_id"], {"JOB_PENDING"}, 10)

    victim.kill()
    wait_nothing_unsettled(origin, time.monotonic(), SETTLE)

    [lost] = finals(origin, [running["job_id"]])
    assert (lost["status"], lost["error"]) == ("JOB_FAILED", f"executor {victim.node_id} lost")
    for moved in finals(origin, [q["job_id"] for q in queued]):
        assert (moved["status"], moved["stdout"]) == ("JOB_COMPLETED", "moved\n")
        assert moved["executor_node"] in {origin.node_id, spare.node_id}
