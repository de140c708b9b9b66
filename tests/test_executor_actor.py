"""One actor with fakes: JobExecutorActor against a store that only records what it is told."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.config import NodeConfig
from actors.executor import SHUTDOWN_REASON, JobExecutorActor
from actors.messages import CancelRun, DropQueuedFrom, GetLoad, JobFinished, JobStarted, Load, RunJob
from proto.codec import pb
from tests.conftest import FAST_TIMING
from tests.helpers import group_is_gone, wait_for

NODE = "node-exec01"


class RecordingStore(pykka.ThreadingActor):
    """Stands in for the StoreActor: keeps every message; `ask("messages")` returns them in order."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "messages":
            return tuple(self.messages)
        self.messages.append(message)
        return None


class Harness:
    def __init__(self, work_dir: Path, max_jobs: int, base_env: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self.store = RecordingStore.start()
        config = NodeConfig(data_dir=work_dir, max_jobs=max_jobs, timing=FAST_TIMING)
        self.executor = JobExecutorActor.start(config, NODE, self.store, work_dir, base_env=base_env)

    def run(self, command: str, timeout: int = 60, origin: str = "", **env: str) -> str:
        job = pb.Job(
            job_id=str(uuid.uuid4()),
            command=command,
            env=env,
            timeout_seconds=timeout,
            created_by_node=origin,
        )
        self.executor.tell(RunJob(job))
        return job.job_id

    def messages(self) -> tuple[Any, ...]:
        return self.store.ask("messages", timeout=5)

    def started(self) -> list[str]:
        return [m.job_id for m in self.messages() if isinstance(m, JobStarted)]

    def finished(self) -> list[pb.JobResult]:
        return [m.result for m in self.messages() if isinstance(m, JobFinished)]

    def final(self, job_id: str) -> pb.JobResult | None:
        """The first result the store was told for `job_id` (the one that settles it)."""
        return next((r for r in self.finished() if r.job_id == job_id), None)

    def load(self) -> Load:
        return self.executor.ask(GetLoad(), timeout=5)

    def pgid(self, name: str) -> int:
        """The process group a job wrote to `<work_dir>/<name>` with `echo $$ > name`."""
        path = self.work_dir / name
        return int(wait_for(lambda: path.exists() and path.read_text().strip(), what=f"{name} to be written"))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(max_jobs: int, base_env: dict[str, str] | None = None) -> Harness:
        made.append(Harness(tmp_path, max_jobs, base_env))
        return made[-1]

    yield make
    for each in made:
        each.executor.stop()
        each.store.stop()


def test_jobs_run_one_at_a_time_in_the_order_they_came_with_one_slot(harness: Callable[..., Harness]) -> None:
    h = harness(1)
    ids = [h.run(f"echo {n}") for n in ("one", "two", "three")]

    wait_for(lambda: len(h.finished()) == 3, what="three results")

    events = [(type(m).__name__, getattr(m, "job_id", None) or m.result.job_id) for m in h.messages()]
    assert events == [
        ("JobStarted", ids[0]), ("JobFinished", ids[0]),
        ("JobStarted", ids[1]), ("JobFinished", ids[1]),
        ("JobStarted", ids[2]), ("JobFinished", ids[2]),
    ]  # fmt: skip
    assert [r.stdout for r in h.finished()] == [b"one\n", b"two\n", b"three\n"]
    assert all(r.status == pb.JOB_COMPLETED for r in h.finished())


def test_no_more_than_max_jobs_run_at_once_and_the_rest_wait_in_order(
    harness: Callable[..., Harness],
) -> None:
    h = harness(2)
    ids = [h.run("sleep 300") for _ in range(5)]

    wait_for(lambda: len(h.started()) == 2, what="two jobs to start")
    assert h.load() == Load(running=2, queued=3, capacity=2)
    assert set(h.started()) == set(ids[:2])  # both at once: their start reports may cross

    assert h.executor.ask(CancelRun(ids[0]), timeout=5) is True
    wait_for(lambda: len(h.started()) == 3, what="the next queued job to start")

    assert set(h.started()) == set(ids[:3])
    assert h.load() == Load(running=2, queued=2, capacity=2)


def test_a_queued_job_can_be_cancelled_and_never_runs(harness: Callable[..., Harness]) -> None:
    h = harness(1)
    blocker = h.run("echo $$ > blocker; sleep 300")
    queued = h.run("echo should-not-run > ran")
    wait_for(lambda: h.started() == [blocker], what="the first job to start")
    blocker_pgid = h.pgid("blocker")

    assert h.executor.ask(CancelRun(queued), timeout=5) is True

    result = h.final(queued)
    assert result is not None
    assert result.status == pb.JOB_CANCELLED
    assert result.error == "cancelled by user"
    assert h.load().queued == 0
    assert h.executor.ask(CancelRun(blocker), timeout=5) is True
    wait_for(lambda: group_is_gone(blocker_pgid), what="the blocker's group to go")
    assert queued not in h.started()
    assert not (h.work_dir / "ran").exists()


def test_a_running_job_can_be_cancelled_and_its_process_group_is_killed(
    harness: Callable[..., Harness],
) -> None:
    h = harness(1)
    job_id = h.run("echo $$ > pgid; sleep 300 & sleep 300")
    pgid = h.pgid("pgid")

    assert h.executor.ask(CancelRun(job_id, reason="stop it"), timeout=5) is True

    settled = h.final(job_id)
    assert settled is not None
    assert settled.status == pb.JOB_CANCELLED
    assert settled.error == "stop it"
    wait_for(lambda: len(h.finished()) == 2, what="the process's own result after the cancel")
    assert group_is_gone(pgid)
    assert h.load() == Load(running=0, queued=0, capacity=1)


def test_cancelling_a_job_the_executor_does_not_have_says_so(harness: Callable[..., Harness]) -> None:
    h = harness(1)

    assert h.executor.ask(CancelRun(str(uuid.uuid4())), timeout=5) is False


def test_a_job_sees_the_node_environment_overlaid_with_its_own(harness: Callable[..., Harness]) -> None:
    h = harness(1, base_env={"PATH": os.environ["PATH"], "FROM_NODE": "node", "DEBUG": "0"})
    job_id = h.run('echo "$FROM_NODE $DEBUG"; sleep 0', DEBUG="1")

    result = wait_for(lambda: h.final(job_id), what="the job's result")

    assert result.stdout == b"node 1\n"
    assert result.status == pb.JOB_COMPLETED  # `sleep` was found: PATH came from the node


def test_stopping_the_executor_kills_running_jobs_and_records_them_cancelled(
    harness: Callable[..., Harness],
) -> None:
    h = harness(2)
    running = [h.run(f"echo $$ > pgid-{n}; sleep 300") for n in range(2)]
    queued = h.run("echo never")
    pgids = [h.pgid(f"pgid-{n}") for n in range(2)]

    h.executor.stop(timeout=10)

    for job_id in running:
        result = h.final(job_id)
        assert result is not None
        assert result.status == pb.JOB_CANCELLED
        assert result.error == SHUTDOWN_REASON
    assert all(group_is_gone(pgid) for pgid in pgids)
    assert h.final(queued) is None  # stays PENDING in the store, to run after a restart


def test_queued_jobs_of_an_origin_declared_failed_are_given_up_and_never_start(
    harness: Callable[..., Harness],
) -> None:
    h = harness(1)
    running = h.run("echo $$ > running-pgid; sleep 30", origin="node-far")
    wait_for(lambda: h.started() == [running], what="the first job to start")
    queued_far = h.run("echo far", origin="node-far")
    queued_near = h.run("echo near", origin="node-near")

    h.executor.tell(DropQueuedFrom("node-far", "origin node-far lost"))

    given_up = wait_for(lambda: h.final(queued_far), what="the far origin's queued job to be given up")
    assert (given_up.status, given_up.error) == (pb.JOB_FAILED, "origin node-far lost")
    assert h.load() == Load(running=1, queued=1, capacity=1)  # the running job and node-near's stay
    h.executor.ask(CancelRun(running), timeout=5)
    assert wait_for(lambda: h.final(queued_near), what="node-near's job to run").status == pb.JOB_COMPLETED
    assert queued_far not in h.started()
