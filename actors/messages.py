"""Messages between actors: small frozen values.

Events (past tense, or imperative fire-and-forget commands) subclass `Event` and are always sent with
tell; queries subclass `Query` and are asked with a timeout, downward only. The ask graph, acyclic:

    web (ApiActor's server threads) ──ask──▶ Dispatcher, JobExecutor, Store, PeerRegistry
    Dispatcher ──ask──▶ Store, JobExecutor
    Node start-up ──ask──▶ Store, Dispatcher
    JobExecutor ──tell──▶ Store, Node listeners;   helper threads ──tell──▶ their own actor

Protobuf values (pb.Job, pb.JobResult, pb.JobRecord) cross actor boundaries only as hand-overs:
the sender builds a fresh one and never touches it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Event:
    """Told, never asked; a handler that raises is logged and the actor goes on."""


class Query:
    """Asked with a timeout; the handler's return value (or exception) goes back to the caller."""


# --- Store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsertJob(Query):
    """Commit a new job (status PENDING) before the API answers 202. Returns None."""

    job: Any  # pb.Job


@dataclass(frozen=True)
class GetJob(Query):
    """Return the pb.JobRecord of `job_id` (with output), or None."""

    job_id: str


@dataclass(frozen=True)
class GetJobStatus(Query):
    """Return the pb.JobStatus of `job_id` (a cheap read, no output), or None."""

    job_id: str


@dataclass(frozen=True)
class ListJobs(Query):
    """Return up to `limit` pb.JobRecords, newest first, without output."""

    limit: int
    status: int | None = None


@dataclass(frozen=True)
class CountJobs(Query):
    """Return {status name: count} over every job the node knows."""


@dataclass(frozen=True)
class RecoverJobs(Query):
    """After a restart: fail jobs this node was running; return (the pb.Jobs it should run again,
    the (pgid, token) of the process groups the failed jobs left behind)."""

    node_id: str


@dataclass(frozen=True)
class JobStarted(Event):
    """The job's process group exists (pgid and token let a restart kill what a crash left)."""

    job_id: str
    executor_node: str
    started_at: Any  # datetime
    attempt: int = 0
    pgid: int = 0
    token: str = ""


@dataclass(frozen=True)
class AcceptHandoff(Query):
    """Store a job handed over by its origin. Returns False if this node already has it."""

    job: Any  # pb.Job


@dataclass(frozen=True)
class UnsettledAt(Query):
    """Return the pb.Jobs `origin` created that are PENDING or RUNNING on node `target`."""

    target: str
    origin: str


@dataclass(frozen=True)
class RetargetJob(Query):
    """Point a job that is not final at `target` as attempt `attempt`. Returns True if done."""

    job_id: str
    target: str
    attempt: int


@dataclass(frozen=True)
class ListUndelivered(Query):
    """Return the ids of results this node owes to their origins."""


@dataclass(frozen=True)
class MarkDelivered(Event):
    job_id: str


@dataclass(frozen=True)
class JobFinished(Event):
    """A final result. Once a job is final its status never changes; later results only add output."""

    result: Any  # pb.JobResult


# --- Job executor ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJob(Event):
    """Queue a job to run here (FIFO); a job id already queued or running is ignored."""

    job: Any  # pb.Job


@dataclass(frozen=True)
class DropQueuedFrom(Event):
    """The node `origin` is declared failed: give up the jobs it handed here that have not
    started (it routes them again), so a partition never runs a job twice."""

    origin: str
    reason: str


@dataclass(frozen=True)
class CancelRun(Query):
    """Cancel a queued or running job here. Returns True if this executor had it."""

    job_id: str
    reason: str = "cancelled by user"


@dataclass(frozen=True)
class GetLoad(Query):
    """Return the executor's Load."""


@dataclass(frozen=True)
class Load:
    running: int
    queued: int
    capacity: int

    @property
    def full(self) -> bool:
        return self.running >= self.capacity


@dataclass(frozen=True)
class ProcessExited(Event):
    """From a job's helper thread: its process group is gone and here is what it did."""

    job: Any  # pb.Job
    outcome: Any  # process.ProcessOutcome


# --- Dispatcher --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitJob(Query):
    """Choose a target, store the job, hand it over. Returns the stored pb.Job; raises Refusal."""

    job: Any  # pb.Job
    pinned: str | None = None  # a node id: run there or nowhere


class Refusal(Exception):
    """The dispatcher will not take a request; `kind` is not_found, conflict or unavailable."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SetDraining(Query):
    """Drain (True) or resume (False). Returns the node status name."""

    draining: bool


@dataclass(frozen=True)
class GetDispatchState(Query):
    """Return {"draining": bool, "handoffs_in_flight": int, ...}."""


@dataclass(frozen=True)
class HandoffDone(Event):
    """From a hand-off helper thread: the target's answer (or the failure to get one)."""

    job_id: str
    node_id: str
    accepted: bool
    reason: str


@dataclass(frozen=True)
class HandoffReceived(Query):
    """A peer asks this node to run a job. Returns (accepted, reason)."""

    job: Any  # pb.Job
    sender: str


@dataclass(frozen=True)
class ResultReceived(Query):
    """An executor reports the final result of a job this node created. Returns None."""

    result: Any  # pb.JobResult
    sender: str


@dataclass(frozen=True)
class UpdateReceived(Query):
    """An executor reports that a job this node created started. Returns None."""

    job_id: str
    executor: str
    started_at: Any  # datetime
    attempt: int


@dataclass(frozen=True)
class CancelReceived(Query):
    """The origin of a job asks this executor to cancel it. Returns True if it was here."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class CancelJob(Query):
    """Cancel a job wherever it is. Returns a CancelOutcome."""

    job_id: str


@dataclass(frozen=True)
class CancelOutcome:
    found: bool
    already_final: bool = False
    record: Any = None  # pb.JobRecord after the cancel, when found


@dataclass(frozen=True)
class LoadChanged(Event):
    """From the executor to its listeners whenever running/queued changes."""

    load: Load


# --- Discovery and peer registry ---------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeReceived(Event):
    """From the discovery socket's helper thread: a decoded envelope and the host it came from."""

    envelope: Any  # pb.Envelope, handed over
    host: str
    now: float  # receiver's monotonic clock when it arrived


@dataclass(frozen=True)
class DatagramDropped(Event):
    reason: str  # one of proto.wire.DROP_REASONS
    detail: str
    host: str


@dataclass(frozen=True)
class SendHeartbeat(Event):
    reason: str  # interval | start | reply | status_change


@dataclass(frozen=True)
class StartAnnouncing(Event):
    """From the node once the API serves: send the first heartbeat and keep sending them."""

    api_port: int
    mesh_port: int = 0


@dataclass(frozen=True)
class AnnounceLeave(Query):
    """Broadcast a leave notice now and stop heartbeats (the node is stopping). Returns None."""


@dataclass(frozen=True)
class GetDiscoveryStats(Query):
    """Return the discovery counters as a dict."""


@dataclass(frozen=True)
class HeartbeatHeard(Event):
    heartbeat: Any  # proto.wire.Heartbeat
    now: float
    wall: Any  # datetime


@dataclass(frozen=True)
class LeaveHeard(Event):
    notice: Any  # proto.wire.LeaveNotice
    now: float
    wall: Any  # datetime


@dataclass(frozen=True)
class ExpirePeers(Event):
    now: float


@dataclass(frozen=True)
class AddPeerListener(Event):
    """Wiring: tell `ref` PeersChanged from now on."""

    ref: Any  # pykka.ActorRef


@dataclass(frozen=True)
class PeersChanged(Event):
    events: tuple[Any, ...]  # actors.peer_table.PeerEvent


@dataclass(frozen=True)
class ListPeers(Query):
    """Return live peers (or all) as a list of actors.peer_table.Peer."""

    include_all: bool = False


@dataclass(frozen=True)
class GetPeerCounts(Query):
    """Return {state: count} plus stale heartbeats."""


@dataclass(frozen=True)
class SavePeers(Event):
    peers: tuple[Any, ...]  # actors.peer_table.Peer


@dataclass(frozen=True)
class LoadPeers(Query):
    """Return [(proto.wire.Heartbeat, last_seen datetime)] of every remembered peer."""


@dataclass(frozen=True)
class DrainingChanged(Event):
    """From the dispatcher to discovery: announce DRAINING (or not) at once."""

    draining: bool


# --- Result courier ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deliver(Event):
    """A result for another node's job is stored: send it to its origin until acknowledged."""

    job_id: str


@dataclass(frozen=True)
class ReportStarted(Event):
    """Tell the origin of a job that it started here (best effort)."""

    job: Any  # pb.Job
    started_at: Any  # datetime


@dataclass(frozen=True)
class DeliveryDone(Event):
    job_id: str
    ok: bool
    error: str


@dataclass(frozen=True)
class RetryDeliveries(Event):
    now: float
