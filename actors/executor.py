"""JobExecutorActor: runs jobs on this node, at most `max_jobs` at once, the rest FIFO.

Each running job has a helper thread that blocks in ProcessRunner.run() and tells the actor
ProcessExited when the job's process group is gone. The actor itself never blocks.
"""

from __future__ import annotations

import os
import pwd
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from actors.base import MeshActor, handles, tell_quietly
from actors.config import NodeConfig
from actors.messages import (
    CancelRun,
    Deliver,
    DropQueuedFrom,
    GetLoad,
    JobFinished,
    JobStarted,
    Load,
    LoadChanged,
    ProcessExited,
    ReportStarted,
    RunJob,
)
from actors.process import ProcessOutcome, ProcessRunner, ProcessSpec
from proto.codec import pb, status_name, to_timestamp, utcnow

SHUTDOWN_REASON = "node shutting down"
SECRET_ENV = ("MESH_KEY", "MESH_API_TOKEN")


@dataclass
class _Running:
    job: pb.Job
    runner: ProcessRunner
    thread: threading.Thread


class JobExecutorActor(MeshActor):
    def __init__(
        self,
        config: NodeConfig,
        node_id: str,
        store: pykka.ActorRef[Any],
        work_dir: Path,
        listeners: Sequence[pykka.ActorRef[Any]] = (),
        base_env: Mapping[str, str] | None = None,
        courier: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__(node_id=node_id)
        self.config = config
        self.node_id = node_id
        self.store = store
        self.work_dir = work_dir
        self.listeners = list(listeners)
        self.courier = courier
        env = dict(os.environ if base_env is None else base_env)
        for secret in SECRET_ENV:  # a job must never read the node's own secrets
            env.pop(secret, None)
        if config.run_as:
            entry = pwd.getpwnam(config.run_as)
            env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        self.base_env = env
        self.queue: deque[pb.Job] = deque()
        self.running: dict[str, _Running] = {}
        self.queued_ids: set[str] = set()

    # -- messages -------------------------------------------------------------------------------

    @handles(RunJob)
    def _run_job(self, message: RunJob) -> None:
        job = message.job
        if job.job_id in self.running or job.job_id in self.queued_ids:
            return
        self.queue.append(job)
        self.queued_ids.add(job.job_id)
        self._fill_slots()
        self._announce()

    @handles(CancelRun)
    def _cancel(self, message: CancelRun) -> bool:
        for job in self.queue:
            if job.job_id == message.job_id:
                self.queue.remove(job)
                self.queued_ids.discard(job.job_id)
                self._settle(job, pb.JOB_CANCELLED, message.reason)
                self.log.info("job_cancelled", job_id=job.job_id, while_status="JOB_PENDING")
                self._announce()
                return True
        entry = self.running.get(message.job_id)
        if entry is None:
            return False
        # The job is settled as cancelled now; its output follows when the group is gone.
        self._settle(entry.job, pb.JOB_CANCELLED, message.reason)
        entry.runner.cancel(message.reason)
        self.log.info("job_cancelled", job_id=message.job_id, while_status="JOB_RUNNING")
        return True

    @handles(DropQueuedFrom)
    def _drop_queued_from(self, message: DropQueuedFrom) -> None:
        dropped = [job for job in self.queue if job.created_by_node == message.origin]
        if not dropped:
            return
        self.queue = deque(job for job in self.queue if job.created_by_node != message.origin)
        for job in dropped:
            self.queued_ids.discard(job.job_id)
            self._settle(job, pb.JOB_FAILED, message.reason)
        self.log.warning(
            "queued_jobs_dropped", origin=message.origin, jobs=len(dropped), reason=message.reason
        )
        self._announce()

    @handles(GetLoad)
    def _get_load(self, _message: GetLoad) -> Load:
        return self._load()

    @handles(ProcessExited)
    def _exited(self, message: ProcessExited) -> None:
        self.running.pop(message.job.job_id, None)  # its helper thread ends right after telling us
        self._record(message.job, message.outcome)
        self._fill_slots()
        self._announce()

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self._shutdown()

    # -- internals ------------------------------------------------------------------------------

    def _load(self) -> Load:
        return Load(running=len(self.running), queued=len(self.queue), capacity=self.config.max_jobs)

    def _announce(self) -> None:
        load = self._load()
        for listener in self.listeners:
            tell_quietly(listener, LoadChanged(load))

    def _fill_slots(self) -> None:
        while self.queue and len(self.running) < self.config.max_jobs:
            job = self.queue.popleft()
            self.queued_ids.discard(job.job_id)
            self._start(job)

    def _start(self, job: pb.Job) -> None:
        env = {**self.base_env, **job.env}
        spec = ProcessSpec(
            command=job.command,
            env=env,
            cwd=str(self.work_dir),
            timeout=float(job.timeout_seconds),
            grace=self.config.timing.kill_grace,
            output_cap=self.config.output_cap,
            user=self.config.run_as,
        )
        runner = ProcessRunner(spec)
        thread = threading.Thread(
            target=self._run_in_helper, args=(job, runner), name=f"job-{job.job_id[:8]}", daemon=True
        )
        self.running[job.job_id] = _Running(job, runner, thread)
        started_at = utcnow()
        if self._is_remote(job):
            tell_quietly(self.courier, ReportStarted(job, started_at))
        self.log.info("job_started", job_id=job.job_id, timeout_seconds=job.timeout_seconds)
        thread.start()

    def _run_in_helper(self, job: pb.Job, runner: ProcessRunner) -> None:
        """Helper thread: blocks until the job's group is gone, then tells the actor."""
        node_id, store = self.node_id, self.store

        def spawned(pgid: int, token: str) -> None:  # before ProcessExited, so the store sees it first
            tell_quietly(store, JobStarted(job.job_id, node_id, utcnow(), job.attempt, pgid, token))

        outcome = runner.run(spawned)
        tell_quietly(self.actor_ref, ProcessExited(job, outcome))

    def _record(self, job: pb.Job, outcome: ProcessOutcome) -> None:
        result = pb.JobResult(
            job_id=job.job_id,
            executor_node_id=self.node_id,
            status=outcome.status,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            error=outcome.error,
        )
        if outcome.exit_code is not None:
            result.exit_code = outcome.exit_code
            result.has_exit_code = True
        result.started_at.CopyFrom(to_timestamp(outcome.started_at))
        result.finished_at.CopyFrom(to_timestamp(outcome.finished_at))
        self._finish(job, result)
        duration = (outcome.finished_at - outcome.started_at).total_seconds()
        self.log.info(
            "job_finished",
            job_id=job.job_id,
            status=status_name(outcome.status),
            exit_code=outcome.exit_code,
            duration_seconds=round(duration, 3),
            error=outcome.error or None,
        )

    def _settle(self, job: pb.Job, status: int, reason: str) -> None:
        """Settle a job that did not (or will not) finish by itself here: cancelled or given up."""
        result = pb.JobResult(job_id=job.job_id, status=status, error=reason)
        result.executor_node_id = self.node_id
        result.finished_at.CopyFrom(to_timestamp(utcnow()))
        self._finish(job, result)

    def _is_remote(self, job: pb.Job) -> bool:
        return bool(job.created_by_node) and job.created_by_node != self.node_id

    def _finish(self, job: pb.Job, result: pb.JobResult) -> None:
        """Store the result; for another node's job, have the courier carry it home."""
        result.attempt = job.attempt
        tell_quietly(self.store, JobFinished(result))
        if self._is_remote(job):
            tell_quietly(self.courier, Deliver(job.job_id))

    def _shutdown(self) -> None:
        """Kill every running job's group and record it cancelled; queued jobs stay PENDING."""
        entries = list(self.running.values())
        self.running.clear()
        for entry in entries:
            self._settle(entry.job, pb.JOB_CANCELLED, SHUTDOWN_REASON)
            entry.runner.cancel(SHUTDOWN_REASON, grace=self.config.timing.shutdown_grace)
        for entry in entries:
            entry.thread.join(timeout=self.config.timing.shutdown_grace + 2.0)
            if entry.runner.outcome is not None:
                self._record(entry.job, entry.runner.outcome)
