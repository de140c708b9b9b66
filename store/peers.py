"""Peer persistence (the `peers` table): the registry saves entries when their state changes and
loads them after a restart as not yet confirmed. Call inside a db_session."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pony import orm

from proto.codec import UTC, pb
from proto.wire import Heartbeat


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def save_peers(db: orm.Database, peers: tuple[Any, ...]) -> None:
    """Upsert each actors.peer_table.Peer."""
    for peer in peers:
        hb: Heartbeat = peer.heartbeat
        fields = {
            "address": hb.address,
            "api_port": hb.api_port,
            "status": peer.state.value,
            "version": hb.version,
            "incarnation": hb.incarnation,
            "metadata": dict(hb.metadata),
            "last_seen": _naive(peer.last_heard_wall),
        }
        row = db.Peer.get(node_id=hb.node_id)
        if row is None:
            db.Peer(node_id=hb.node_id, first_seen=fields["last_seen"], **fields)
        else:
            row.set(**fields)


def load_peers(db: orm.Database) -> list[tuple[Heartbeat, datetime, str]]:
    """Every remembered peer as (its last heartbeat, when it was last heard, its state then)."""
    remembered = []
    for row in db.Peer.select():
        host, _, port = row.address.rpartition(":")
        hb = Heartbeat(
            node_id=row.node_id,
            incarnation=row.incarnation,
            host=host,
            mesh_port=int(port) if port.isdigit() else 0,
            api_port=row.api_port or 0,
            status=pb.IDLE,
            running=0,
            queued=0,
            capacity=0,
            version=row.version,
            metadata=tuple(sorted((row.metadata or {}).items())),
        )
        remembered.append((hb, row.last_seen.replace(tzinfo=UTC), row.status))
    return remembered
