"""MeshInbox: turns envelopes arriving on the mesh port into dispatcher asks, and answers each with
an Ack. Runs on the MeshListener's connection threads (an adapter like the web layer, not an
actor); every ask has a timeout, and a slow or stopped node answers "busy" instead of hanging.
"""

from __future__ import annotations

from typing import Any

import pykka

from actors.logs import get_logger
from actors.messages import CancelReceived, HandoffReceived, ResultReceived, UpdateReceived
from proto import wire
from proto.codec import from_timestamp, pb


class MeshInbox:
    def __init__(
        self,
        node_id: str,
        incarnation: int,
        dispatcher: pykka.ActorRef[Any],
        ask_timeout: float,
        channel: wire.Channel | None = None,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.dispatcher = dispatcher
        self.ask_timeout = ask_timeout
        self.log = get_logger(node_id=node_id, component="mesh_inbox")
        self.channel = channel or wire.Channel(node_id, incarnation)

    def handle(self, envelope: pb.Envelope, host: str) -> pb.Envelope:
        """Answer one request; never raises."""
        body = envelope.WhichOneof("body")
        sender = envelope.sender_id
        job_id, accepted, reason = "", False, "unsupported"
        try:
            if body == "handoff":
                job = pb.Job()
                job.CopyFrom(envelope.handoff.job)
                job_id = job.job_id
                accepted, reason = self._ask(HandoffReceived(job, sender))
            elif body == "job_result":
                result = pb.JobResult()
                result.CopyFrom(envelope.job_result.result)
                job_id = result.job_id
                self._ask(ResultReceived(result, sender))
                accepted, reason = True, ""
            elif body == "job_update":
                update = envelope.job_update
                job_id = update.job_id
                started = from_timestamp(update.started_at)
                self._ask(UpdateReceived(job_id, sender, started, update.attempt))
                accepted, reason = True, ""
            elif body == "cancel":
                job_id = envelope.cancel.job_id
                accepted = bool(
                    self._ask(CancelReceived(job_id, envelope.cancel.reason or "cancelled by origin"))
                )
                reason = "" if accepted else "unknown_job"
        except (pykka.Timeout, pykka.ActorDeadError):
            accepted, reason = False, "busy"
        except Exception:
            self.log.exception("mesh_request_failed", body=body, sender=sender, source=host)
            accepted, reason = False, "internal_error"
        reply = self.channel.envelope()
        reply.ack.job_id, reply.ack.accepted, reply.ack.reason = job_id, accepted, reason
        return reply

    def _ask(self, message: Any) -> Any:
        return self.dispatcher.ask(message, timeout=self.ask_timeout)
