"""The peer table: who is out there and whether they are alive. Pure state, no threads, no I/O.

Every method takes `now` from the receiver's monotonic clock. The sender's own timestamps are
never used for expiry, so clock skew between hosts changes nothing. Rules:

- A heartbeat from an unknown node adds it ALIVE (event "joined").
- A higher incarnation of a known node replaces its entry at once ("restarted"); a lower one is
  stale and ignored, so a late datagram from before a restart never overwrites the newer entry.
- The same incarnation refreshes the entry; a FAILED entry heard again comes back ("recovered");
  a LEFT entry stays left (a heartbeat that overtook the leave notice must not resurrect it).
- A leave notice of the current (or a newer) incarnation marks the entry LEFT at once ("left").
- An ALIVE entry silent for `peer_timeout` becomes FAILED ("failed"); an UNCONFIRMED one (loaded
  from disk after a restart, not heard since) likewise.
- A node announcing the same host and API port as another live entry replaces it ("replaced"):
  one address, one live node, even when a restart came with a new id.
- FAILED and LEFT entries are forgotten after `forget_after`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum

from proto.wire import Heartbeat


class PeerState(str, Enum):
    ALIVE = "ALIVE"
    UNCONFIRMED = "UNCONFIRMED"
    FAILED = "FAILED"
    LEFT = "LEFT"


LIVE_STATES = (PeerState.ALIVE, PeerState.UNCONFIRMED)


@dataclass(frozen=True)
class Peer:
    """One entry: the last heartbeat heard from a node and when (receiver's clocks)."""

    heartbeat: Heartbeat
    state: PeerState
    last_heard: float  # receiver's monotonic clock
    last_heard_wall: datetime  # receiver's wall clock, for display only

    @property
    def node_id(self) -> str:
        return self.heartbeat.node_id

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


@dataclass(frozen=True)
class PeerEvent:
    kind: str  # joined | restarted | recovered | left | failed | replaced
    peer: Peer


class PeerTable:
    """Not thread-safe: owned by one actor."""

    def __init__(self, own_id: str, peer_timeout: float, forget_after: float = 3600.0) -> None:
        self.own_id = own_id
        self.peer_timeout = peer_timeout
        self.forget_after = max(forget_after, peer_timeout)
        self._peers: dict[str, Peer] = {}
        self.stale_heartbeats = 0

    def load(self, heartbeat: Heartbeat, last_seen_wall: datetime, now: float, state: str = "ALIVE") -> None:
        """Add a peer remembered from disk: one that was live comes back UNCONFIRMED (it expires
        unless heard); one that had failed or left stays so."""
        if heartbeat.node_id == self.own_id or heartbeat.node_id in self._peers:
            return
        remembered = PeerState.UNCONFIRMED
        if state in (PeerState.FAILED.value, PeerState.LEFT.value):
            remembered = PeerState(state)
        self._peers[heartbeat.node_id] = Peer(heartbeat, remembered, now, last_seen_wall)

    def observe(self, hb: Heartbeat, now: float, wall: datetime) -> list[PeerEvent]:
        """Apply a heartbeat; returns what changed (empty for a plain refresh or a stale one)."""
        if hb.node_id == self.own_id:
            return []
        old = self._peers.get(hb.node_id)
        fresh = Peer(hb, PeerState.ALIVE, now, wall)
        if old is None:
            kind = "joined"
        elif hb.incarnation < old.heartbeat.incarnation:
            self.stale_heartbeats += 1
            return []
        elif hb.incarnation > old.heartbeat.incarnation:
            kind = "restarted"
        elif old.state is PeerState.LEFT:
            return []
        elif old.state is PeerState.FAILED:
            kind = "recovered"
        elif old.state is PeerState.UNCONFIRMED:
            kind = "joined"
        else:
            self._peers[hb.node_id] = fresh
            return []
        self._peers[hb.node_id] = fresh
        return [*self._replace_same_address(fresh), PeerEvent(kind, fresh)]

    def leave(self, node_id: str, incarnation: int, now: float, wall: datetime) -> list[PeerEvent]:
        """A clean leave notice: the entry is LEFT at once."""
        old = self._peers.get(node_id)
        if old is None or incarnation < old.heartbeat.incarnation or old.state is PeerState.LEFT:
            return []
        gone = replace(old, state=PeerState.LEFT, last_heard=now, last_heard_wall=wall)
        self._peers[node_id] = gone
        return [PeerEvent("left", gone)]

    def expire(self, now: float) -> list[PeerEvent]:
        """Fail live entries silent for peer_timeout; forget long-dead ones."""
        events = []
        for node_id, peer in list(self._peers.items()):
            silent = now - peer.last_heard
            if peer.live and silent > self.peer_timeout:
                failed = replace(peer, state=PeerState.FAILED)
                self._peers[node_id] = failed
                events.append(PeerEvent("failed", failed))
            elif not peer.live and silent > self.forget_after:
                del self._peers[node_id]
        return events

    def get(self, node_id: str) -> Peer | None:
        return self._peers.get(node_id)

    def peers(self, include_all: bool = False) -> list[Peer]:
        """Live entries (ALIVE or UNCONFIRMED), or every entry; sorted by node id."""
        chosen = [p for p in self._peers.values() if include_all or p.live]
        return sorted(chosen, key=lambda p: p.node_id)

    def counts(self) -> dict[str, int]:
        counts = {state.value.lower(): 0 for state in PeerState}
        for peer in self._peers.values():
            counts[peer.state.value.lower()] += 1
        return counts

    def _replace_same_address(self, fresh: Peer) -> list[PeerEvent]:
        events = []
        hb = fresh.heartbeat
        for node_id, peer in list(self._peers.items()):
            other = peer.heartbeat
            if node_id != hb.node_id and peer.live and (other.host, other.api_port) == (hb.host, hb.api_port):
                gone = replace(peer, state=PeerState.LEFT)
                self._peers[node_id] = gone
                events.append(PeerEvent("replaced", gone))
        return events
