"""Message framing: a 4-byte prefix, then one serialized `mesh.v1.Envelope`. No sockets here.

    datagram (UDP discovery):  b"WM" | version (1 byte, now 1) | flags (1 byte, 0 = plain) | Envelope
                               (flags 1: sealed with the mesh key, see proto/seal.py)
    frame (TCP mesh port):     length (4 bytes, big-endian, of what follows) | the same as a datagram

The prefix lets a node recognise foreign traffic on its port and drop it before parsing; the size
is checked before anything else (a frame's length before anything is allocated). Decoding raises
Dropped with a short reason that nodes count.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from proto.codec import pb, to_timestamp, utcnow
from proto.seal import KeyHolder, Keyring, ReplayGuard, Sequencer

MAGIC = b"WM"
VERSION = 1
FLAGS_PLAIN = 0
FLAGS_SEALED = 1
PREFIX = MAGIC + bytes([VERSION, FLAGS_PLAIN])
SEALED_PREFIX = MAGIC + bytes([VERSION, FLAGS_SEALED])
MAX_DATAGRAM = 8192  # heartbeats are a few hundred bytes; anything near this is not ours
MAX_FRAME = 4 * 1024 * 1024  # a result carries at most 1 MiB of stdout and 1 MiB of stderr
FRAME_HEADER = struct.Struct(">I")
# A node id: also a single path component (it may name a data directory), never "." or "..".
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

DROP_REASONS = (
    "empty",
    "too_large",
    "bad_magic",
    "unknown_version",
    "unknown_flags",
    "malformed",
    "no_sender",
    "bad_sender",
    "no_body",
    "bad_heartbeat",
    "unsealed",
    "sealed",
    "bad_key",
    "tampered",
    "replayed",
    "not_local",
)


class Dropped(Exception):
    """A datagram that is not a usable message; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat says about its sender, plus the host it came from."""

    node_id: str
    incarnation: int
    host: str
    mesh_port: int
    api_port: int
    status: int  # pb.NodeStatus
    running: int
    queued: int
    capacity: int
    version: str
    metadata: tuple[tuple[str, str], ...] = field(default=())
    api_tls: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.mesh_port}"


@dataclass(frozen=True)
class LeaveNotice:
    node_id: str
    incarnation: int
    reason: str


def _body(envelope: pb.Envelope, keyring: Keyring | None) -> bytes:
    payload = envelope.SerializeToString()
    if keyring is None:
        return PREFIX + payload
    return keyring.seal(SEALED_PREFIX, payload)


def encode(envelope: pb.Envelope, keyring: Keyring | None = None) -> bytes:
    """A datagram (sealed when a keyring is given); ValueError if it would not fit in one."""
    data = _body(envelope, keyring)
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"message of {len(data)} bytes exceeds the {MAX_DATAGRAM}-byte datagram limit")
    return data


def envelope(sender_id: str, incarnation: int, sequence: int) -> pb.Envelope:
    """A new envelope from this node, stamped with the sender's wall clock (shown, never trusted)."""
    env = pb.Envelope(sender_id=sender_id, incarnation=incarnation, sequence=sequence)
    env.sent_at.CopyFrom(to_timestamp(utcnow()))
    return env


def encode_frame(envelope: pb.Envelope, keyring: Keyring | None = None) -> bytes:
    """A frame for the mesh port (sealed when a keyring is given); ValueError above MAX_FRAME."""
    body = _body(envelope, keyring)
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return FRAME_HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The length announced by a frame header; raises Dropped before anything is allocated."""
    (length,) = FRAME_HEADER.unpack(header)
    if length > MAX_FRAME:
        raise Dropped("too_large", f"frame of {length} bytes")
    return length


def decode(data: bytes, limit: int = MAX_DATAGRAM, keyring: Keyring | None = None) -> pb.Envelope:
    """Parse one datagram (or frame body); raises Dropped. Size and prefix are checked first; a
    node with a keyring takes only sealed messages, a node without one only plain ones."""
    if not data:
        raise Dropped("empty")
    if len(data) > limit:
        raise Dropped("too_large", f"{len(data)} bytes")
    if len(data) < len(PREFIX) or data[:2] != MAGIC:
        raise Dropped("bad_magic")
    if data[2] != VERSION:
        raise Dropped("unknown_version", f"version {data[2]}")
    payload = _payload(data, keyring)
    env = pb.Envelope()
    try:
        env.ParseFromString(payload)
    except DecodeError as exc:
        raise Dropped("malformed", str(exc)) from None
    if not env.sender_id:
        raise Dropped("no_sender")
    if not NODE_ID.fullmatch(env.sender_id):
        raise Dropped("bad_sender", repr(env.sender_id[:70]))
    if env.WhichOneof("body") is None:
        raise Dropped("no_body")
    return env


def _payload(data: bytes, keyring: Keyring | None) -> bytes:
    """The serialized envelope inside a message whose prefix has been checked."""
    if data[3] == FLAGS_PLAIN:
        if keyring is not None:
            raise Dropped("unsealed")
        return data[len(PREFIX) :]
    if data[3] != FLAGS_SEALED:
        raise Dropped("unknown_flags", f"flags {data[3]}")
    if keyring is None:
        raise Dropped("sealed", "sealed with a key and this node has none")
    try:
        return keyring.open(data, len(SEALED_PREFIX))
    except ValueError as exc:
        raise Dropped(str(exc)) from None


class Channel:
    """How one node speaks on the wire: its identity, its keys (if any), one sequence for all it
    sends, and the replay window for what it receives. Thread-safe; shared by every actor."""

    def __init__(self, node_id: str, incarnation: int, keys: KeyHolder | None = None) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.keys = keys or KeyHolder(None)
        self.sequencer = Sequencer()
        self.guard = ReplayGuard()

    @property
    def sealed(self) -> bool:
        return self.keys.sealed

    def envelope(self) -> pb.Envelope:
        """A new envelope from this node with the next sequence number."""
        return envelope(self.node_id, self.incarnation, self.sequencer.next())

    def datagram(self, env: pb.Envelope) -> bytes:
        return encode(env, self.keys.keyring)

    def frame(self, env: pb.Envelope) -> bytes:
        return encode_frame(env, self.keys.keyring)

    def open(self, data: bytes, limit: int = MAX_DATAGRAM, check_replay: bool = True) -> pb.Envelope:
        """Decode (and open) one message; with a key, a replay is dropped as `replayed`."""
        keyring = self.keys.keyring
        env = decode(data, limit, keyring)
        if (
            keyring is not None
            and check_replay
            and not self.guard.accept(env.sender_id, env.incarnation, env.sequence)
        ):
            raise Dropped(
                "replayed", f"{env.sender_id} incarnation {env.incarnation} sequence {env.sequence}"
            )
        return env


def heartbeat_from(env: pb.Envelope, host: str) -> Heartbeat:
    """The Heartbeat in `env`, sent from `host`; raises Dropped when its fields make no sense."""
    info = env.heartbeat
    if info.node_id and info.node_id != env.sender_id:
        raise Dropped("bad_heartbeat", "node_id differs from the envelope's sender")
    if info.api_port > 65535 or info.mesh_port > 65535:
        raise Dropped("bad_heartbeat", "port out of range")
    if info.status not in (pb.IDLE, pb.BUSY, pb.DRAINING):
        raise Dropped("bad_heartbeat", f"status {info.status}")
    metadata = tuple(sorted((k[:64], v[:256]) for k, v in list(info.metadata.items())[:32]))
    return Heartbeat(
        node_id=env.sender_id,
        incarnation=env.incarnation,
        host=host,
        mesh_port=info.mesh_port,
        api_port=info.api_port,
        status=info.status,
        running=info.running,
        queued=info.queued,
        capacity=info.capacity,
        version=info.version[:64],
        metadata=metadata,
        api_tls=info.api_tls,
    )


def leave_from(env: pb.Envelope) -> LeaveNotice:
    return LeaveNotice(env.sender_id, env.incarnation, env.leave.reason[:200])
