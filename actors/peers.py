"""PeerRegistryActor: a thin actor around the pure PeerTable.

It applies what discovery hears, expires silent peers on a Ticker, logs every change as a fact
(`peer_joined`, `peer_failed`, ...), persists changed entries to the store and tells listeners
(discovery answers newcomers; routing will follow peers) PeersChanged.
"""

from __future__ import annotations

import time
from typing import Any

import pykka

from actors.base import MeshActor, handles, tell_quietly
from actors.messages import (
    AddPeerListener,
    ExpirePeers,
    GetPeerCounts,
    HeartbeatHeard,
    LeaveHeard,
    ListPeers,
    LoadPeers,
    PeersChanged,
    SavePeers,
)
from actors.peer_table import Peer, PeerEvent, PeerState, PeerTable
from actors.timer import Ticker
from proto.codec import node_status_name, rfc3339, utcnow


class PeerRegistryActor(MeshActor):
    def __init__(
        self,
        node_id: str,
        peer_timeout: float,
        store: pykka.ActorRef[Any] | None,
        ask_timeout: float = 5.0,
    ) -> None:
        super().__init__(node_id=node_id)
        self.table = PeerTable(node_id, peer_timeout)
        self.store = store
        self.ask_timeout = ask_timeout
        self.listeners: list[pykka.ActorRef[Any]] = []
        # Expiry is checked often enough that a failure is noticed well within one interval.
        self.ticker_period = max(0.02, min(0.5, peer_timeout / 20))
        self.ticker: Ticker | None = None

    def on_start(self) -> None:
        if self.store is not None:
            now = time.monotonic()
            for heartbeat, last_seen, state in self.store.ask(LoadPeers(), timeout=self.ask_timeout):
                self.table.load(heartbeat, last_seen, now, state)
        self.ticker = Ticker(self.actor_ref, self.ticker_period, ExpirePeers, "peer-expiry")
        self.ticker.start()

    def on_stop(self) -> None:
        self._stop_ticker()
        self._persist(tuple(self.table.peers(include_all=True)))

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self._stop_ticker()

    @handles(HeartbeatHeard)
    def _heartbeat(self, message: HeartbeatHeard) -> None:
        self._publish(self.table.observe(message.heartbeat, message.now, message.wall))

    @handles(LeaveHeard)
    def _leave(self, message: LeaveHeard) -> None:
        notice = message.notice
        self._publish(self.table.leave(notice.node_id, notice.incarnation, message.now, message.wall))

    @handles(ExpirePeers)
    def _expire(self, message: ExpirePeers) -> None:
        self._publish(self.table.expire(message.now))

    @handles(AddPeerListener)
    def _add_listener(self, message: AddPeerListener) -> None:
        self.listeners.append(message.ref)

    @handles(ListPeers)
    def _list(self, message: ListPeers) -> list[Peer]:
        return self.table.peers(include_all=message.include_all)

    @handles(GetPeerCounts)
    def _counts(self, _message: GetPeerCounts) -> dict[str, int]:
        return {**self.table.counts(), "stale_heartbeats": self.table.stale_heartbeats}

    def _publish(self, events: list[PeerEvent]) -> None:
        if not events:
            return
        for event in events:
            hb = event.peer.heartbeat
            self.log.info(
                f"peer_{event.kind}",
                peer_id=hb.node_id,
                address=hb.address,
                api_port=hb.api_port,
                incarnation=hb.incarnation,
                silent_seconds=round(time.monotonic() - event.peer.last_heard, 3)
                if event.kind == "failed"
                else None,
            )
        self._persist(tuple(event.peer for event in events))
        message = PeersChanged(tuple(events))
        for listener in self.listeners:
            tell_quietly(listener, message)

    def _persist(self, peers: tuple[Peer, ...]) -> None:
        if self.store is not None and peers:
            tell_quietly(self.store, SavePeers(peers))

    def _stop_ticker(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()


def api_url(host: str, port: int, tls: bool = False) -> str:
    """`http://127.0.0.1:3000/api/v1`; IPv6 hosts in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/api/v1"


def peer_json(peer: Peer, now: float | None = None) -> dict[str, Any]:
    """One item of GET /api/v1/peers."""
    hb = peer.heartbeat
    now = time.monotonic() if now is None else now
    if peer.state is PeerState.UNCONFIRMED:  # loaded from disk: only the wall clock knows how long
        ago = (utcnow() - peer.last_heard_wall).total_seconds()
    else:
        ago = now - peer.last_heard
    status = node_status_name(hb.status) if peer.state is PeerState.ALIVE else peer.state.value
    return {
        "node_id": hb.node_id,
        "address": hb.address,
        "api_url": api_url(hb.host, hb.api_port, tls=hb.api_tls) if hb.api_port else None,
        "status": status,
        "last_heartbeat": rfc3339(peer.last_heard_wall),
        "last_seen_seconds_ago": round(max(0.0, ago), 3),
        "running": hb.running,
        "queued": hb.queued,
        "capacity": hb.capacity,
        "version": hb.version,
        "incarnation": hb.incarnation,
        "metadata": dict(hb.metadata),
    }
