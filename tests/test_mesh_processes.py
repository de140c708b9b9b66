"""Jobs across real `run_node.py` processes on one host: routing, hand-off, results home, failover.

Each test has its own discovery port and data dirs under tmp_path; heartbeats every 0.2 s and a
1 s peer timeout, so failover is quick. Everything is seen through the REST APIs (and, for the
replayed hand-off, one raw frame on a mesh port). Waits poll with deadlines or use ?wait=.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.mesh_transport import request
from proto import wire
from proto.codec import pb, to_timestamp, utcnow
from tests.helpers import group_is_gone
from tests.meshjobs import (
    PEER_TIMEOUT,
    Cluster,
    expect,
    finals,
    job,
    job_body,
    jobs,
    only_route_to,
    peer_status,
    submit,
    submit_many,
    wait_nothing_unsettled,
    wait_status,
)
from tests.meshnodes import MeshNode, wait_until

pytestmark = pytest.mark.process

SETTLE = PEER_TIMEOUT + 5.0  # failure detection plus re-routing, with room for a slow machine


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(tmp_path)
    yield group
    group.close()


def executors(finished: list[dict]) -> Counter[str]:
    return Counter(j["executor_node"] for j in finished)


def test_thirty_jobs_posted_to_one_node_run_on_every_node_and_all_complete_with_output_on_the_origin(
    cluster: Cluster,
) -> None:
    origin, *others = nodes = cluster.start("a", "b", "c")

    submitted = submit_many(origin, [job_body("sleep 0.3; echo done") for _ in range(30)])
    finished = finals(origin, [s["job_id"] for s in submitted])

    ids = {node.node_id for node in nodes}
    targets = Counter(s["target_node"] for s in submitted)
    print(f"\ntargets {dict(targets)}, executors {dict(executors(finished))}")
    assert set(targets) == ids, f"chosen targets {dict(targets)}"
    assert set(executors(finished)) == ids, f"executors {dict(executors(finished))}"
    assert {(j["status"], j["stdout"], j["exit_code"]) for j in finished} == {("JOB_COMPLETED", "done\n", 0)}
    for node in others:
        theirs = [j for j in jobs(node) if j["created_by_node"] == origin.node_id]
        assert theirs, f"{node.name} lists none of the origin's jobs"
        assert {j["status"] for j in theirs} == {"JOB_COMPLETED"}


def test_a_burst_posted_to_one_node_spreads_about_evenly_over_nodes_of_equal_capacity(
    cluster: Cluster,
) -> None:
    # Least loaded by (running + queued) / capacity: three nodes of two slots share a burst of 30.
    origin, *_ = nodes = cluster.start("a", "b", "c")

    submitted = submit_many(origin, [job_body("sleep 0.3; echo done") for _ in range(30)])
    began = time.monotonic()
    finished = finals(origin, [s["job_id"] for s in submitted])
    took = time.monotonic() - began

    ran = executors(finished)
    print(f"\nexecutors {dict(ran)}; all final {took:.2f}s after the last POST")
    assert all(ran[node.node_id] >= 5 for node in nodes), f"30 jobs over 3 equal nodes ran as {dict(ran)}"


def test_a_pinned_job_runs_on_its_node_which_lists_it_as_created_by_the_origin(cluster: Cluster) -> None:
    origin, _, pinned = cluster.start("a", "b", "c")

    submitted = submit(origin, "echo pinned", target_node=pinned.node_id)
    [finished] = finals(origin, [submitted["job_id"]])

    assert submitted["target_node"] == pinned.node_id
    assert (finished["status"], finished["executor_node"], finished["stdout"]) == (
        "JOB_COMPLETED",
        pinned.node_id,
        "pinned\n",
    )
    [there] = [j for j in jobs(pinned) if j["job_id"] == submitted["job_id"]]
    assert (there["created_by_node"], there["status"]) == (origin.node_id, "JOB_COMPLETED")


def test_a_job_pinned_to_an_unknown_node_is_404_and_to_a_draining_node_409_both_as_json(
    cluster: Cluster,
) -> None:
    origin, drained = cluster.start("a", "b")

    unknown = expect(origin.call("POST", "/jobs", job_body("true", target_node="node-nowhere")), 404)
    assert expect(drained.call("POST", "/drain"), 200)["status"] == "DRAINING"
    wait_until(lambda: peer_status(origin, drained.node_id) == "DRAINING", 5, "the origin to see DRAINING")
    refused = expect(origin.call("POST", "/jobs", job_body("true", target_node=drained.node_id)), 409)

    assert unknown["error"]["code"] == "node_not_found"
    assert "node-nowhere" in unknown["error"]["message"]
    assert drained.node_id in refused["error"]["message"]
    assert refused["error"]["code"] == "node_draining"
    assert jobs(origin) == []


def test_a_killed_executor_s_queued_jobs_complete_elsewhere_and_its_running_jobs_fail_or_retry(
    cluster: Cluster, tmp_path: Path
) -> None:
    origin, victim, spare = nodes = cluster.start("a", "b", "c")
    marker = tmp_path / "ran-once"
    with only_route_to(origin, [spare]):  # so everything lands on the victim, unpinned
        running = submit(origin, cluster.tracked("sleep 30"))
        retried = submit(
            origin,
            cluster.tracked(f"if [ -e {marker} ]; then echo again; else touch {marker}; sleep 30; fi"),
            retries=1,
        )
        queued = [submit(origin, "echo moved") for _ in range(2)]
        assert {j["target_node"] for j in (running, retried, *queued)} == {victim.node_id}
    for started in (running, retried):
        wait_status(origin, started["job_id"], {"JOB_RUNNING"}, 10)
    for waiting in queued:
        wait_status(victim, waiting["job_id"], {"JOB_PENDING"}, 10)

    victim.kill()
    wait_nothing_unsettled(origin, time.monotonic(), SETTLE)

    [lost] = finals(origin, [running["job_id"]])
    assert (lost["status"], lost["error"]) == ("JOB_FAILED", f"executor {victim.node_id} lost")
    [again] = finals(origin, [retried["job_id"]])
    assert (again["status"], again["stdout"], again["attempt"]) == ("JOB_COMPLETED", "again\n", 2)
    assert again["executor_node"] in {n.node_id for n in nodes if n is not victim}
    for moved in finals(origin, [q["job_id"] for q in queued]):
        assert (moved["status"], moved["stdout"]) == ("JOB_COMPLETED", "moved\n")
        assert moved["executor_node"] in {n.node_id for n in nodes if n is not victim}


def test_a_result_finished_while_its_origin_was_down_arrives_when_the_origin_restarts(
    cluster: Cluster, tmp_path: Path
) -> None:
    origin, peer = cluster.start("a", "b")
    submitted = submit(origin, "sleep 1; echo hi", target_node=peer.node_id)
    wait_status(peer, submitted["job_id"], {"JOB_RUNNING"}, 10)

    origin.kill()
    wait_status(peer, submitted["job_id"], {"JOB_COMPLETED"}, 10)
    restarted = cluster.spawn("a", data_dir=tmp_path / "a").wait_started()
    assert restarted.node_id == origin.node_id

    [arrived] = finals(restarted, [submitted["job_id"]])
    assert (arrived["status"], arrived["stdout"], arrived["executor_node"]) == (
        "JOB_COMPLETED",
        "hi\n",
        peer.node_id,
    )


def test_a_draining_node_gets_no_new_jobs_finishes_its_running_one_and_resumes(cluster: Cluster) -> None:
    origin, drained, third = cluster.start("a", "b", "c")
    before = submit(origin, "sleep 1; echo finished", target_node=drained.node_id)
    wait_status(drained, before["job_id"], {"JOB_RUNNING"}, 10)

    assert expect(drained.call("POST", "/drain"), 200)["status"] == "DRAINING"
    wait_until(
        lambda: peer_status(origin, drained.node_id) == peer_status(third, drained.node_id) == "DRAINING",
        3,
        "both peers to list the drained node as DRAINING",
    )
    posted = submit_many(origin, [job_body("true") for _ in range(20)])
    posted_to_drained = submit_many(drained, [job_body("true") for _ in range(3)])

    assert drained.node_id not in {s["target_node"] for s in posted + posted_to_drained}
    assert {j["status"] for j in finals(origin, [s["job_id"] for s in posted])} == {"JOB_COMPLETED"}
    elsewhere = finals(drained, [s["job_id"] for s in posted_to_drained])
    assert {j["status"] for j in elsewhere} == {"JOB_COMPLETED"}
    [done] = finals(origin, [before["job_id"]])
    assert (done["status"], done["executor_node"], done["stdout"]) == (
        "JOB_COMPLETED",
        drained.node_id,
        "finished\n",
    )
    assert drained.status()["status"] == "DRAINING"

    assert expect(drained.call("POST", "/resume"), 200)["status"] == "IDLE"
    assert drained.status()["status"] == "IDLE"
    wait_until(lambda: peer_status(origin, drained.node_id) == "IDLE", 3, "the origin to see IDLE again")


def handoff_frame(sender: str, target: MeshNode, command: str) -> pb.Envelope:
    envelope = wire.envelope(sender, 1, 1)
    handed = envelope.handoff.job
    handed.job_id = str(uuid.uuid4())
    handed.command = command
    handed.timeout_seconds = 30
    handed.status = pb.JOB_PENDING
    handed.created_by_node = sender
    handed.target_node_id = target.node_id
    handed.attempt = 1
    handed.created_at.CopyFrom(to_timestamp(utcnow()))
    return envelope


def test_a_replayed_handoff_frame_is_acknowledged_as_a_duplicate_and_never_runs_the_job_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    [node] = cluster.start("a")
    out = tmp_path / "lines"
    envelope = handoff_frame("replayer-1", node, f"echo x >> {out}")
    job_id = envelope.handoff.job.job_id

    first = request(node.mesh_address, envelope, 5.0).ack
    replay = request(node.mesh_address, envelope, 5.0).ack
    finals(node, [job_id])
    late = request(node.mesh_address, envelope, 5.0).ack

    assert (first.job_id, first.accepted, first.reason) == (job_id, True, "")
    assert (replay.accepted, replay.reason) == (True, "duplicate")
    assert (late.accepted, late.reason) == (True, "duplicate")
    assert out.read_text() == "x\n"
    [listed] = [j for j in jobs(node) if j["job_id"] == job_id]
    assert (listed["status"], listed["created_by_node"]) == ("JOB_COMPLETED", "replayer-1")


def test_delete_on_the_origin_cancels_a_job_running_on_another_node_and_ends_its_process(
    cluster: Cluster, tmp_path: Path
) -> None:
    origin, executor = cluster.start("a", "b")
    pidfile = tmp_path / "cancelled-pid"
    submitted = submit(origin, f"echo $$ > {pidfile}; sleep 30", target_node=executor.node_id)
    job_id = submitted["job_id"]
    wait_status(origin, job_id, {"JOB_RUNNING"}, 10)
    pgid = int(wait_until_text(pidfile))

    cancelled = expect(origin.call("DELETE", f"/jobs/{job_id}"), 200)

    assert cancelled["status"] == "JOB_CANCELLED"
    assert job(origin, job_id)["status"] == "JOB_CANCELLED"
    wait_status(executor, job_id, {"JOB_CANCELLED"}, 10)
    wait_until(lambda: group_is_gone(pgid), 10, "the cancelled job's process group to end")


def wait_until_text(path: Path, timeout: float = 10.0) -> str:
    """The stripped text of `path` once it has some."""
    wait_until(lambda: path.exists() and path.read_text().strip(), timeout, f"{path} to be written")
    return path.read_text().strip()


def test_a_job_pinned_to_a_node_that_dies_fails_and_is_never_routed_elsewhere(cluster: Cluster) -> None:
    origin, victim, _ = cluster.start("a", "b", "c")
    pin = {"target_node": victim.node_id}
    running = [submit(origin, cluster.tracked("sleep 30"), **pin) for _ in range(2)]  # both slots
    waiting = submit(origin, "echo must-not-move", **pin)
    for started in running:
        wait_status(origin, started["job_id"], {"JOB_RUNNING"}, 10)
    wait_status(victim, waiting["job_id"], {"JOB_PENDING"}, 10)

    victim.kill()
    wait_nothing_unsettled(origin, time.monotonic(), SETTLE)

    for lost in finals(origin, [*(j["job_id"] for j in running), waiting["job_id"]]):
        assert (lost["status"], lost["error"]) == ("JOB_FAILED", f"pinned node {victim.node_id} lost")
        assert lost["target_node"] == victim.node_id
