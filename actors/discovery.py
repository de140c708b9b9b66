"""DiscoveryActor: broadcasts this node's heartbeat and hands what it hears to the peer registry.

- A heartbeat (an Envelope carrying NodeInfo) goes out at start, every heartbeat interval, at once
  when the node's status changes (IDLE/BUSY/DRAINING), and as a rate-limited reply when the
  registry reports a peer we did not know, so a newcomer learns the mesh in a fraction of a second.
- On a clean stop a leave notice goes out, and peers drop the node at once.
- The transport's reader thread decodes datagrams (proto.wire) and tells this actor what arrived
  or why it was dropped; drops are counted by reason, the first of each logged at WARNING.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pykka

from actors.base import MeshActor, handles, tell_quietly
from actors.config import NodeConfig
from actors.messages import (
    AnnounceLeave,
    DatagramDropped,
    DrainingChanged,
    EnvelopeReceived,
    GetDiscoveryStats,
    HeartbeatHeard,
    LeaveHeard,
    Load,
    LoadChanged,
    PeersChanged,
    SendHeartbeat,
    StartAnnouncing,
)
from actors.security import is_loopback
from actors.timer import Ticker
from proto import wire
from proto.codec import node_status_name, pb, utcnow

REPLY_GAP = 0.05  # at most one reply heartbeat per this many seconds; later ones are coalesced
_ANSWER_KINDS = frozenset({"joined", "restarted", "recovered"})


class DiscoveryActor(MeshActor):
    def __init__(
        self,
        config: NodeConfig,
        node_id: str,
        incarnation: int,
        registry: pykka.ActorRef[Any],
        transport: Any,
        channel: wire.Channel | None = None,
    ) -> None:
        super().__init__(node_id=node_id)
        self.config = config
        self.node_id = node_id
        self.incarnation = incarnation
        self.registry = registry
        self.transport = transport
        self.api_port = 0  # known once the API has bound: see StartAnnouncing
        self.mesh_port = 0
        self.targets = [(address, config.discovery_port) for address in config.broadcast]
        self.load = Load(0, 0, config.max_jobs)
        self.draining = False
        self.channel = channel or wire.Channel(node_id, incarnation)
        # Unsealed and not --insecure: the mesh is this host only, so is what it listens to (the
        # socket is bound to 0.0.0.0 to hear broadcasts, and so could hear the LAN too).
        self.local_only = not self.channel.sealed and not config.insecure
        self.metadata = {"hostname": socket.gethostname(), "pid": str(os.getpid()), **dict(config.labels)}
        self.stats: dict[str, Any] = {
            "heartbeats_sent": 0,
            "heartbeats_received": 0,
            "leaves_sent": 0,
            "leaves_received": 0,
            "send_errors": 0,
            "dropped": dict.fromkeys(wire.DROP_REASONS, 0),
        }
        self._warned: set[str] = set()
        self.ticker: Ticker | None = None
        self.announcing = False
        self.last_reply = float("-inf")
        self.reply_timer: threading.Timer | None = None
        self.channel.datagram(self._heartbeat_envelope())  # labels too large for a datagram fail at start

    # -- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        ref, channel = self.actor_ref, self.channel
        self.transport.start(lambda data, host, now: _hand_over(ref, channel, data, host, now))

    def on_stop(self) -> None:
        if self.announcing:
            self._leave("stopping")
        self._close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self._close()

    # -- messages -------------------------------------------------------------------------------

    @handles(StartAnnouncing)
    def _start_announcing(self, message: StartAnnouncing) -> None:
        if self.announcing:
            return
        self.announcing = True
        self.api_port, self.mesh_port = message.api_port, message.mesh_port
        self._send_heartbeat("start")
        interval = self.config.timing.heartbeat_interval
        self.ticker = Ticker(self.actor_ref, interval, lambda _now: SendHeartbeat("interval"), "heartbeat")
        self.ticker.start()

    @handles(SendHeartbeat)
    def _send(self, message: SendHeartbeat) -> None:
        if message.reason == "reply":
            self.reply_timer = None
            self.last_reply = time.monotonic()
        if self.announcing:
            self._send_heartbeat(message.reason)

    @handles(AnnounceLeave)
    def _announce_leave(self, _message: AnnounceLeave) -> None:
        if self.announcing:
            self._leave("stopping")

    @handles(LoadChanged)
    def _load_changed(self, message: LoadChanged) -> None:
        before = self._status()
        self.load = message.load
        if self._status() != before and self.announcing:
            self._send_heartbeat("status_change")

    @handles(DrainingChanged)
    def _draining_changed(self, message: DrainingChanged) -> None:
        before = self._status()
        self.draining = message.draining
        if self._status() != before and self.announcing:
            self._send_heartbeat("status_change")

    @handles(PeersChanged)
    def _peers_changed(self, message: PeersChanged) -> None:
        if self.announcing and any(event.kind in _ANSWER_KINDS for event in message.events):
            self._reply_soon()

    @handles(EnvelopeReceived)
    def _received(self, message: EnvelopeReceived) -> None:
        env = message.envelope
        if env.sender_id == self.node_id:
            return  # our own broadcast, looped back
        if self.local_only and not is_loopback(message.host):
            self._drop("not_local", "an unsealed node hears only its own host", message.host)
            return
        body = env.WhichOneof("body")
        wall = utcnow()
        if body == "heartbeat":
            try:
                heartbeat = wire.heartbeat_from(env, message.host)
            except wire.Dropped as exc:
                self._drop(exc.reason, exc.detail, message.host)
                return
            self.stats["heartbeats_received"] += 1
            self.registry.tell(HeartbeatHeard(heartbeat, message.now, wall))
        elif body == "leave":
            self.stats["leaves_received"] += 1
            self.registry.tell(LeaveHeard(wire.leave_from(env), message.now, wall))
        # Other bodies belong to the mesh port (TCP), not to discovery: ignore them.

    @handles(DatagramDropped)
    def _dropped(self, message: DatagramDropped) -> None:
        self._drop(message.reason, message.detail, message.host)

    @handles(GetDiscoveryStats)
    def _get_stats(self, _message: GetDiscoveryStats) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.stats.items() if k != "dropped"},
            "dropped": dict(self.stats["dropped"]),
            "port": self.config.discovery_port,
            "broadcast": list(self.config.broadcast),
            "heartbeat_interval_seconds": self.config.timing.heartbeat_interval,
            "peer_timeout_seconds": self.config.timing.peer_timeout,
        }

    # -- internals ------------------------------------------------------------------------------

    def _status(self) -> int:
        if self.draining:
            return pb.DRAINING
        return pb.BUSY if self.load.full else pb.IDLE

    def _next_envelope(self) -> pb.Envelope:
        return self.channel.envelope()

    def _heartbeat_envelope(self) -> pb.Envelope:
        env = self._next_envelope()
        info = env.heartbeat
        info.node_id = self.node_id
        info.status = self._status()
        info.version = self.config.version
        info.mesh_port = self.mesh_port
        info.api_port = self.api_port
        info.running = self.load.running
        info.queued = self.load.queued
        info.capacity = self.load.capacity
        info.incarnation = self.incarnation
        info.api_tls = self.config.tls_cert is not None
        info.metadata.update(self.metadata)
        info.last_heartbeat.CopyFrom(env.sent_at)
        return env

    def _send_heartbeat(self, reason: str) -> None:
        self._broadcast(self.channel.datagram(self._heartbeat_envelope()))
        self.stats["heartbeats_sent"] += 1
        self.log.debug("heartbeat_sent", reason=reason, status=node_status_name(self._status()))

    def _leave(self, reason: str) -> None:
        env = self._next_envelope()
        env.leave.reason = reason
        self._broadcast(self.channel.datagram(env))
        self.stats["leaves_sent"] += 1
        self.announcing = False
        self._stop_timers()
        self.log.info("leave_sent", reason=reason)

    def _broadcast(self, data: bytes) -> None:
        for target, exc in self.transport.send(data, self.targets):
            self.stats["send_errors"] += 1
            self._log_once(
                f"send:{target[0]}",
                "heartbeat_send_failed",
                target=f"{target[0]}:{target[1]}",
                error=str(exc),
            )

    def _reply_soon(self) -> None:
        """Answer a newcomer now, or once REPLY_GAP has passed since the last answer (coalesced)."""
        if self.reply_timer is not None:
            return
        wait = self.last_reply + REPLY_GAP - time.monotonic()
        if wait <= 0:
            self.last_reply = time.monotonic()
            self._send_heartbeat("reply")
            return
        ref = self.actor_ref
        self.reply_timer = threading.Timer(wait, lambda: tell_quietly(ref, SendHeartbeat("reply")))
        self.reply_timer.daemon = True
        self.reply_timer.start()

    def _drop(self, reason: str, detail: str, host: str) -> None:
        self.stats["dropped"][reason] = self.stats["dropped"].get(reason, 0) + 1
        self._log_once(f"drop:{reason}", "datagram_dropped", reason=reason, detail=detail[:200], source=host)

    def _log_once(self, key: str, event: str, **fields: Any) -> None:
        """First of a kind at WARNING, the rest at DEBUG; the set of kinds is bounded."""
        if key not in self._warned and len(self._warned) < 256:
            self._warned.add(key)
            self.log.warning(event, **fields)
        else:
            self.log.debug(event, **fields)

    def _stop_timers(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        if self.reply_timer is not None:
            self.reply_timer.cancel()
            self.reply_timer = None

    def _close(self) -> None:
        self._stop_timers()
        self.transport.close()


def _hand_over(ref: pykka.ActorRef[Any], channel: wire.Channel, data: bytes, host: str, now: float) -> None:
    """On the transport's reader thread: decode, then tell the actor what arrived (never raises)."""
    try:
        message: Any = EnvelopeReceived(channel.open(data), host, now)
    except wire.Dropped as exc:
        message = DatagramDropped(exc.reason, exc.detail, host)
    except Exception as exc:  # noqa: BLE001 - the reader loop must survive anything
        message = DatagramDropped("malformed", repr(exc), host)
    tell_quietly(ref, message)
