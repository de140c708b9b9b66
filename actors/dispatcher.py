"""DispatcherActor: where jobs go. The single entry point for new jobs, cancels, drain/resume,
and the mesh messages about jobs (hand-offs, starts, results, cancels from other nodes).

A new job is routed (actors.routing), committed to the store (asked, so it is on disk before the
API answers 202), then run here or handed to its target over the mesh port. Hand-offs run on a
small thread pool and their outcome comes back as HandoffDone; a refused or unreachable target
sends the job to the next candidate, and after MAX_HANDOFF_ATTEMPTS the job runs here. When a
peer fails, leaves or restarts, the jobs this node gave it are routed again (not started yet, or
asked for retries) or failed with the reason "executor <id> lost".
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pykka

from actors.base import MeshActor, handles, tell_quietly
from actors.config import Timing
from actors.mesh_transport import ask_peer
from actors.messages import (
    AcceptHandoff,
    CancelJob,
    CancelOutcome,
    CancelReceived,
    CancelRun,
    DrainingChanged,
    DropQueuedFrom,
    GetDispatchState,
    GetJob,
    GetLoad,
    HandoffDone,
    HandoffReceived,
    InsertJob,
    JobFinished,
    JobStarted,
    ListPeers,
    PeersChanged,
    Refusal,
    ResultReceived,
    RetargetJob,
    RunJob,
    SetDraining,
    SubmitJob,
    UnsettledAt,
    UpdateReceived,
)
from actors.peer_table import Peer, PeerState
from actors.routing import Candidate, rank
from proto import wire
from proto.codec import FINAL_STATUSES, node_status_name, pb, to_timestamp, utcnow

MAX_HANDOFF_ATTEMPTS = 3
QUEUE_FACTOR = 4  # a node refuses hand-offs once it has this many queued jobs per slot
_LOST_KINDS = frozenset({"failed", "restarted", "left", "replaced"})


@dataclass
class _Handoff:
    job: pb.Job
    rest: list[Candidate]
    pinned: bool
    attempts: int = 1


def candidate_of(peer: Peer) -> Candidate:
    hb = peer.heartbeat
    address = (hb.host, hb.mesh_port)
    return Candidate(hb.node_id, hb.running, hb.queued, hb.capacity, hb.status, address, peer.last_heard)


class DispatcherActor(MeshActor):
    def __init__(
        self,
        node_id: str,
        incarnation: int,
        store: pykka.ActorRef[Any],
        executor: pykka.ActorRef[Any],
        registry: pykka.ActorRef[Any] | None,
        discovery: pykka.ActorRef[Any] | None,
        timing: Timing,
        rng: random.Random | None = None,
        channel: wire.Channel | None = None,
        allowed: Any = None,
    ) -> None:
        super().__init__(node_id=node_id)
        self.node_id = node_id
        self.incarnation = incarnation
        self.store = store
        self.executor = executor
        self.registry = registry
        self.discovery = discovery
        self.timing = timing
        self.rng = rng or random.Random()  # noqa: S311 - tie-breaking, not security
        self.draining = False
        self.inflight: dict[str, _Handoff] = {}
        self.sent: dict[str, tuple[float, int]] = {}  # peer → (its last_heard when counted, jobs sent)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mesh-send")
        self.channel = channel or wire.Channel(node_id, incarnation)
        self.allowed = allowed  # CommandPolicy or None: every command allowed

    def on_stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- new jobs -------------------------------------------------------------------------------

    @handles(SubmitJob)
    def _submit(self, message: SubmitJob) -> pb.Job:
        job = message.job
        if self.allowed is not None and not self.allowed.allows(job.command):
            raise Refusal(
                "forbidden", "command_not_allowed", "this node does not run that command (--allow-commands)"
            )
        me, peers = self._me(), self._peers()
        if message.pinned:
            order = [self._pinned_target(message.pinned, me)]
        else:
            order = rank(me, [candidate_of(p) for p in peers], self._sent_counts(peers), self.rng)
            if not order:
                raise Refusal(
                    "conflict", "node_draining", "this node is draining and no live peer can take jobs"
                )
        job.target_node_id = order[0].node_id
        job.pinned = bool(message.pinned)
        job.status = pb.JOB_PENDING
        job.attempt = job.attempt or 1
        self.store.ask(InsertJob(job), timeout=self.timing.ask_timeout)
        self.log.info(
            "job_submitted",
            job_id=job.job_id,
            target_node=job.target_node_id,
            pinned=bool(message.pinned),
            command=job.command,
            env_keys=sorted(job.env),
            timeout_seconds=job.timeout_seconds,
            retries=job.retries,
        )
        returned = pb.Job()
        returned.CopyFrom(job)
        self._dispatch(job, order, pinned=bool(message.pinned))
        return returned

    def _pinned_target(self, node_id: str, me: Candidate) -> Candidate:
        if node_id == self.node_id:
            if self.draining:
                raise Refusal("conflict", "node_draining", f"{node_id} (this node) is draining")
            return me
        peer = next((p for p in self._peers(include_all=True) if p.node_id == node_id), None)
        if peer is None:
            raise Refusal("not_found", "node_not_found", f"no node {node_id!r} is known to this node")
        if peer.state is not PeerState.ALIVE or not peer.heartbeat.mesh_port:
            raise Refusal("conflict", "node_not_live", f"{node_id} is {peer.state.value}, not live")
        if peer.heartbeat.status == pb.DRAINING:
            raise Refusal("conflict", "node_draining", f"{node_id} is draining")
        return candidate_of(peer)

    def _dispatch(self, job: pb.Job, order: list[Candidate], pinned: bool) -> None:
        target = order[0]
        if target.node_id == self.node_id:
            self.executor.tell(RunJob(job))
            return
        state = _Handoff(job, list(order[1:]), pinned)
        self.inflight[job.job_id] = state
        self._send_handoff(state, target)

    def _send_handoff(self, state: _Handoff, target: Candidate) -> None:
        job = state.job
        job.target_node_id = target.node_id
        self._count_sent(target)
        envelope = self._envelope()
        envelope.handoff.job.CopyFrom(job)
        ref, job_id = self.actor_ref, job.job_id
        future = self.pool.submit(ask_peer, target.address, envelope, self.timing.mesh_timeout, self.channel)

        def done(f: Future[tuple[bool, str]]) -> None:
            accepted, reason = (False, "cancelled") if f.cancelled() else f.result()
            tell_quietly(ref, HandoffDone(job_id, target.node_id, accepted, reason))

        future.add_done_callback(done)

    @handles(HandoffDone)
    def _handoff_done(self, message: HandoffDone) -> None:
        state = self.inflight.get(message.job_id)
        if state is None or state.job.target_node_id != message.node_id:
            return
        if message.accepted:
            del self.inflight[message.job_id]
            self.log.info("job_handed_off", job_id=message.job_id, target_node=message.node_id)
            return
        self.log.warning(
            "handoff_refused", job_id=message.job_id, target_node=message.node_id, reason=message.reason
        )
        if state.attempts >= MAX_HANDOFF_ATTEMPTS or (not state.pinned and not state.rest):
            del self.inflight[message.job_id]
            if state.pinned:
                self._settle(
                    state.job,
                    pb.JOB_FAILED,
                    f"pinned node {message.node_id} did not take the job: {message.reason}",
                )
            else:
                self._retarget_and_run_here(state.job)
            return
        state.attempts += 1
        if state.pinned:
            self._send_handoff(state, self._last_known(message.node_id))
            return
        target = state.rest.pop(0)
        if target.node_id == self.node_id:
            del self.inflight[message.job_id]
            self._retarget_and_run_here(state.job)
            return
        if self._retarget(state.job, target.node_id, state.job.attempt):
            self._send_handoff(state, target)
        else:
            del self.inflight[message.job_id]  # settled meanwhile (cancelled)

    # -- failure handling -----------------------------------------------------------------------

    @handles(PeersChanged)
    def _peers_changed(self, message: PeersChanged) -> None:
        for event in message.events:
            node_id = event.peer.node_id
            if event.kind == "failed":
                # As their executor: that origin routes the jobs it gave us again, so the ones
                # that have not started must not start here too (a partition, not a crash).
                reason = f"origin {node_id} lost before the job started; it routes the job again"
                self.executor.tell(DropQueuedFrom(node_id, reason))
            if event.kind in _LOST_KINDS:
                self._executor_lost(node_id, event.kind)

    def _executor_lost(self, node_id: str, why: str) -> None:
        jobs = self.store.ask(UnsettledAt(node_id, self.node_id), timeout=self.timing.ask_timeout)
        for job in jobs:
            if job.job_id in self.inflight:
                continue  # the hand-off's own outcome decides where it goes
            started = job.status == pb.JOB_RUNNING
            if job.pinned:
                self._settle(job, pb.JOB_FAILED, f"pinned node {node_id} lost")
                continue
            if started and job.attempt > job.retries:
                self._settle(job, pb.JOB_FAILED, f"executor {node_id} lost")
                continue
            self.log.info("job_rerouted", job_id=job.job_id, lost_node=node_id, why=why, was_running=started)
            self._reroute(job, exclude=frozenset({node_id}))

    def _reroute(self, job: pb.Job, exclude: frozenset[str]) -> None:
        peers = self._peers()
        order = rank(
            self._me(), [candidate_of(p) for p in peers], self._sent_counts(peers), self.rng, exclude
        )
        order = order or [self._me()]  # never lose a job: queue it here
        if self._retarget(job, order[0].node_id, job.attempt + 1):
            self._dispatch(job, order, pinned=False)

    def _retarget(self, job: pb.Job, target: str, attempt: int) -> bool:
        done = self.store.ask(RetargetJob(job.job_id, target, attempt), timeout=self.timing.ask_timeout)
        if done:
            job.target_node_id, job.attempt, job.status = target, attempt, pb.JOB_PENDING
        return done

    def _retarget_and_run_here(self, job: pb.Job) -> None:
        if self._retarget(job, self.node_id, job.attempt):
            self.log.info("job_kept_here", job_id=job.job_id)
            self.executor.tell(RunJob(job))

    def _settle(self, job: pb.Job, status: int, error: str) -> None:
        result = pb.JobResult(job_id=job.job_id, status=status, error=error, attempt=job.attempt)
        result.finished_at.CopyFrom(to_timestamp(utcnow()))
        self.store.ask(JobFinished(result), timeout=self.timing.ask_timeout)
        self.log.info("job_settled_here", job_id=job.job_id, status=pb.JobStatus.Name(status), error=error)

    # -- cancel, drain --------------------------------------------------------------------------

    @handles(CancelJob)
    def _cancel(self, message: CancelJob) -> CancelOutcome:
        record = self.store.ask(GetJob(message.job_id), timeout=self.timing.ask_timeout)
        if record is None:
            return CancelOutcome(found=False)
        job = record.job
        if job.status in FINAL_STATUSES:
            return CancelOutcome(found=True, already_final=True, record=record)
        if job.target_node_id == self.node_id:
            if not self.executor.ask(CancelRun(job.job_id), timeout=self.timing.ask_timeout):
                self._settle(job, pb.JOB_CANCELLED, "cancelled by user")
        else:
            self.inflight.pop(job.job_id, None)
            self._settle(job, pb.JOB_CANCELLED, "cancelled by user")
            self._send_cancel(job)
        return CancelOutcome(
            found=True, record=self.store.ask(GetJob(job.job_id), timeout=self.timing.ask_timeout)
        )

    def _send_cancel(self, job: pb.Job) -> None:
        peer = self._last_known(job.target_node_id)
        if peer.address is None or not peer.address[1]:
            return
        envelope = self._envelope()
        envelope.cancel.job_id = job.job_id
        envelope.cancel.reason = "cancelled by user"
        self.pool.submit(ask_peer, peer.address, envelope, self.timing.mesh_timeout, self.channel)

    @handles(SetDraining)
    def _set_draining(self, message: SetDraining) -> str:
        if message.draining != self.draining:
            self.draining = message.draining
            self.log.info("node_draining" if self.draining else "node_resumed")
            tell_quietly(self.discovery, DrainingChanged(self.draining))
        return node_status_name(self._me().status)

    @handles(GetDispatchState)
    def _state(self, _message: GetDispatchState) -> dict[str, Any]:
        return {"draining": self.draining, "handoffs_in_flight": len(self.inflight)}

    # -- from other nodes (asked by the mesh inbox) --------------------------------------------

    @handles(HandoffReceived)
    def _handoff_received(self, message: HandoffReceived) -> tuple[bool, str]:
        job = message.job
        if job.created_by_node != message.sender or job.target_node_id != self.node_id:
            return False, "wrong_node"
        if self.draining:
            return False, "draining"
        if self.allowed is not None and not self.allowed.allows(job.command):
            self.log.warning("handoff_refused_command", job_id=job.job_id, origin=message.sender)
            return False, "command_not_allowed"
        load = self.executor.ask(GetLoad(), timeout=self.timing.ask_timeout)
        if load.queued >= load.capacity * QUEUE_FACTOR:
            return False, "full"
        if not self.store.ask(AcceptHandoff(job), timeout=self.timing.ask_timeout):
            return True, "duplicate"  # already have it: never run a job twice
        self.log.info("job_accepted", job_id=job.job_id, origin=message.sender, attempt=job.attempt)
        self.executor.tell(RunJob(job))
        return True, ""

    @handles(ResultReceived)
    def _result_received(self, message: ResultReceived) -> None:
        result = message.result
        if result.executor_node_id != message.sender:
            return
        self.inflight.pop(result.job_id, None)
        self.store.ask(JobFinished(result), timeout=self.timing.ask_timeout)
        self.log.info(
            "job_result_received",
            job_id=result.job_id,
            executor_node=result.executor_node_id,
            status=pb.JobStatus.Name(result.status),
            attempt=result.attempt,
        )

    @handles(UpdateReceived)
    def _update_received(self, message: UpdateReceived) -> None:
        self.inflight.pop(message.job_id, None)
        self.store.tell(JobStarted(message.job_id, message.executor, message.started_at, message.attempt))

    @handles(CancelReceived)
    def _cancel_received(self, message: CancelReceived) -> bool:
        return self.executor.ask(CancelRun(message.job_id, message.reason), timeout=self.timing.ask_timeout)

    # -- internals ------------------------------------------------------------------------------

    def _me(self) -> Candidate:
        load = self.executor.ask(GetLoad(), timeout=self.timing.ask_timeout)
        status = pb.DRAINING if self.draining else (pb.BUSY if load.full else pb.IDLE)
        return Candidate(self.node_id, load.running, load.queued, load.capacity, status, None)

    def _peers(self, include_all: bool = False) -> list[Peer]:
        if self.registry is None:
            return []
        peers = self.registry.ask(ListPeers(include_all), timeout=self.timing.ask_timeout)
        if include_all:
            return peers
        return [p for p in peers if p.state is PeerState.ALIVE and p.heartbeat.mesh_port]

    def _last_known(self, node_id: str) -> Candidate:
        for peer in self._peers(include_all=True):
            if peer.node_id == node_id:
                return candidate_of(peer)
        return Candidate(node_id, 0, 0, 0, pb.FAILED, None)

    def _sent_counts(self, peers: list[Peer]) -> dict[str, int]:
        """Jobs sent to each peer since its last heartbeat (older counts are in its announced load)."""
        counts = {}
        for peer in peers:
            heard, count = self.sent.get(peer.node_id, (None, 0))
            counts[peer.node_id] = count if heard == peer.last_heard else 0
        return counts

    def _count_sent(self, target: Candidate) -> None:
        """One more job sent to `target` since the heartbeat its load came from."""
        if target.heard is None:
            return
        heard, count = self.sent.get(target.node_id, (None, 0))
        self.sent[target.node_id] = (target.heard, count + 1 if heard == target.heard else 1)

    def _envelope(self) -> pb.Envelope:
        return self.channel.envelope()
