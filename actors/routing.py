"""Where a new job should run: a pure policy over the nodes' latest load. No threads, no I/O.

Rules (the README repeats them):
- Candidates are the live peers that announced a mesh port, and this node itself. DRAINING and
  FAILED nodes are never chosen.
- A node's load is (running + queued + jobs this node sent it since its last heartbeat) / capacity.
  A node with no free slot by that count is "full" and is chosen only when every node is full;
  then this node keeps the job in its own queue (or, if it is draining, the least loaded peer).
- Least loaded first; ties are broken at random, so a burst spreads out.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proto.codec import pb


@dataclass(frozen=True)
class Candidate:
    node_id: str
    running: int
    queued: int
    capacity: int
    status: int  # pb.NodeStatus
    address: tuple[str, int] | None  # mesh (host, port); None for this node
    heard: float | None = None  # when its load was last heard (receiver's clock); None for this node


def _used(candidate: Candidate, sent: Mapping[str, int]) -> int:
    return candidate.running + candidate.queued + sent.get(candidate.node_id, 0)


def load(candidate: Candidate, sent: Mapping[str, int]) -> float:
    return _used(candidate, sent) / max(candidate.capacity, 1)


def has_room(candidate: Candidate, sent: Mapping[str, int]) -> bool:
    return _used(candidate, sent) < max(candidate.capacity, 1)


def rank(
    me: Candidate,
    peers: Sequence[Candidate],
    sent: Mapping[str, int],
    rng: random.Random,
    exclude: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """Every acceptable target, best first; empty when no node can take the job."""
    usable = [c for c in (me, *peers) if c.status in (pb.IDLE, pb.BUSY) and c.node_id not in exclude]
    shuffled = rng.sample(usable, len(usable))  # random tie-break, then a stable sort
    ordered = sorted(shuffled, key=lambda c: load(c, sent))
    with_room = [c for c in ordered if has_room(c, sent)]
    if with_room:
        return with_room + [c for c in ordered if c not in with_room and c.node_id == me.node_id]
    # Everyone is full: queue where the queue is shortest for its size; this node wins a tie.
    return sorted(ordered, key=lambda c: (load(c, sent), c.node_id != me.node_id))
