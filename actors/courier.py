"""ResultCourierActor: carries results of jobs run here back to the nodes that created them.

A result for another node's job is kept in SQLite as undelivered until its origin acknowledges it,
so delivery survives restarts of either side: on start the courier picks up every undelivered
result; a failed attempt is retried with exponential backoff (0.5 s doubling to 30 s), and at once
when the origin is heard again. JOB_RUNNING updates are sent once, best effort.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pykka

from actors.base import MeshActor, handles, tell_quietly
from actors.config import Timing
from actors.mesh_transport import ask_peer
from actors.messages import (
    Deliver,
    DeliveryDone,
    GetJob,
    ListPeers,
    ListUndelivered,
    MarkDelivered,
    PeersChanged,
    ReportStarted,
    RetryDeliveries,
)
from actors.peer_table import PeerState
from actors.timer import Ticker
from proto import wire
from proto.codec import FINAL_STATUSES, pb, to_timestamp

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
_BACK_KINDS = frozenset({"joined", "restarted", "recovered"})


class ResultCourierActor(MeshActor):
    def __init__(
        self,
        node_id: str,
        incarnation: int,
        store: pykka.ActorRef[Any],
        registry: pykka.ActorRef[Any],
        timing: Timing,
        channel: wire.Channel | None = None,
    ) -> None:
        super().__init__(node_id=node_id)
        self.node_id = node_id
        self.incarnation = incarnation
        self.store = store
        self.registry = registry
        self.timing = timing
        self.channel = channel or wire.Channel(node_id, incarnation)
        self.due: dict[str, tuple[float, int]] = {}  # job id → (when to try next, failures so far)
        self.sending: set[str] = set()
        self.changed_while_sending: set[str] = set()  # send again: the stored result grew meanwhile
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="courier")
        self.ticker: Ticker | None = None

    def on_start(self) -> None:
        for job_id in self.store.ask(ListUndelivered(), timeout=self.timing.ask_timeout):
            self.due[job_id] = (0.0, 0)
        if self.due:
            self.log.info("results_to_deliver", count=len(self.due))
        self.ticker = Ticker(self.actor_ref, 0.25, RetryDeliveries, "courier-retry")
        self.ticker.start()

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self._close()

    @handles(Deliver)
    def _deliver(self, message: Deliver) -> None:
        # A cancelled job is delivered twice: at once, and again with its process's output.
        if message.job_id in self.sending:
            self.changed_while_sending.add(message.job_id)
        self.due[message.job_id] = (0.0, self.due.get(message.job_id, (0.0, 0))[1])
        self._try(message.job_id)

    @handles(RetryDeliveries)
    def _retry(self, message: RetryDeliveries) -> None:
        for job_id, (when, _failures) in list(self.due.items()):
            if when <= message.now:
                self._try(job_id)

    @handles(PeersChanged)
    def _peers_changed(self, message: PeersChanged) -> None:
        if any(event.kind in _BACK_KINDS for event in message.events):
            self.due = {job_id: (0.0, failures) for job_id, (_when, failures) in self.due.items()}

    @handles(DeliveryDone)
    def _done(self, message: DeliveryDone) -> None:
        self.sending.discard(message.job_id)
        if message.ok:
            self.log.info("result_delivered", job_id=message.job_id)
            if message.job_id in self.changed_while_sending:
                self.changed_while_sending.discard(message.job_id)
                self._try(message.job_id)
                return
            self.due.pop(message.job_id, None)
            self.store.tell(MarkDelivered(message.job_id))
            return
        self.changed_while_sending.discard(message.job_id)  # the retry sends what is stored then
        self._back_off(message.job_id, message.error)

    @handles(ReportStarted)
    def _report_started(self, message: ReportStarted) -> None:
        job = message.job
        address = self._origin_address(job.created_by_node)
        if address is None:
            return
        envelope = self._envelope()
        update = envelope.job_update
        update.job_id, update.status, update.executor_node_id = job.job_id, pb.JOB_RUNNING, self.node_id
        update.attempt = job.attempt
        update.started_at.CopyFrom(to_timestamp(message.started_at))
        self.pool.submit(ask_peer, address, envelope, self.timing.mesh_timeout, self.channel)

    # -- internals ------------------------------------------------------------------------------

    def _try(self, job_id: str) -> None:
        if job_id in self.sending:
            return
        record = self.store.ask(GetJob(job_id), timeout=self.timing.ask_timeout)
        if record is None or record.job.status not in FINAL_STATUSES:
            self.due.pop(job_id, None)
            return
        address = self._origin_address(record.job.created_by_node)
        if address is None:
            self._back_off(job_id, f"origin {record.job.created_by_node} is not live")
            return
        envelope = self._envelope()
        envelope.job_result.result.CopyFrom(record.result)
        envelope.job_result.result.executor_node_id = self.node_id
        self.sending.add(job_id)
        ref = self.actor_ref
        future = self.pool.submit(ask_peer, address, envelope, self.timing.mesh_timeout, self.channel)

        def done(f: Future[tuple[bool, str]]) -> None:
            ok, reason = (False, "cancelled") if f.cancelled() else f.result()
            tell_quietly(ref, DeliveryDone(job_id, ok, reason or "not acknowledged"))

        future.add_done_callback(done)

    def _back_off(self, job_id: str, error: str) -> None:
        failures = self.due.get(job_id, (0.0, 0))[1] + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failures - 1))
        self.due[job_id] = (time.monotonic() + delay, failures)
        log = self.log.warning if failures == 1 else self.log.debug
        log("result_delivery_failed", job_id=job_id, error=error, retry_in_seconds=delay)

    def _origin_address(self, origin: str) -> tuple[str, int] | None:
        for peer in self.registry.ask(ListPeers(False), timeout=self.timing.ask_timeout):
            hb = peer.heartbeat
            if peer.node_id == origin and peer.state is PeerState.ALIVE and hb.mesh_port:
                return hb.host, hb.mesh_port
        return None

    def _envelope(self) -> pb.Envelope:
        return self.channel.envelope()

    def _close(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
