"""DispatcherActor: the single entry point for new jobs and cancels.

A new job is committed to the store (asked, so it is on disk before the API answers 202), then
handed to an executor. Today that is always this node's own executor; routing to the least-loaded
peer plugs in here.
"""

from __future__ import annotations

from typing import Any

import pykka

from actors.base import MeshActor, handles
from actors.messages import (
    CancelJob,
    CancelOutcome,
    CancelRun,
    GetJob,
    InsertJob,
    JobFinished,
    RunJob,
    SubmitJob,
)
from proto.codec import FINAL_STATUSES, pb, to_timestamp, utcnow


class DispatcherActor(MeshActor):
    def __init__(
        self,
        node_id: str,
        store: pykka.ActorRef[Any],
        executor: pykka.ActorRef[Any],
        ask_timeout: float,
    ) -> None:
        super().__init__(node_id=node_id)
        self.node_id = node_id
        self.store = store
        self.executor = executor
        self.ask_timeout = ask_timeout

    @handles(SubmitJob)
    def _submit(self, message: SubmitJob) -> pb.Job:
        job = message.job
        job.target_node_id = self.node_id
        job.status = pb.JOB_PENDING
        self.store.ask(InsertJob(job), timeout=self.ask_timeout)
        self.log.info(
            "job_submitted",
            job_id=job.job_id,
            target_node=job.target_node_id,
            command=job.command,
            env_keys=sorted(job.env),
            timeout_seconds=job.timeout_seconds,
        )
        returned = pb.Job()
        returned.CopyFrom(job)
        self.executor.tell(RunJob(job))
        return returned

    @handles(CancelJob)
    def _cancel(self, message: CancelJob) -> CancelOutcome:
        record = self.store.ask(GetJob(message.job_id), timeout=self.ask_timeout)
        if record is None:
            return CancelOutcome(found=False)
        if record.job.status in FINAL_STATUSES:
            return CancelOutcome(found=True, already_final=True, record=record)
        had_it = self.executor.ask(CancelRun(message.job_id), timeout=self.ask_timeout)
        if not had_it:
            # Stored but not with the executor (e.g. between restart and recovery): settle it here.
            result = pb.JobResult(job_id=message.job_id, status=pb.JOB_CANCELLED, error="cancelled by user")
            result.finished_at.CopyFrom(to_timestamp(utcnow()))
            self.store.tell(JobFinished(result))
        return CancelOutcome(
            found=True, record=self.store.ask(GetJob(message.job_id), timeout=self.ask_timeout)
        )
