"""The mesh port: length-prefixed protobuf Envelope frames over TCP, one request and one reply.

`MeshListener` binds in __init__ (a busy port fails at start) and serves each connection on a
short-lived thread: read a frame (length checked before anything is allocated), hand the envelope
to `handle`, write back the Envelope it returns. Read timeouts everywhere: a peer that connects
and says nothing holds one thread for `read_timeout` at most, and connections beyond
`max_connections` are closed at once. A bad frame closes its own connection only, and is counted.

`request()` is the client: connect, send one frame, read one reply, close; it blocks, so callers
run it on a helper thread, never on an actor's.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from actors.logs import get_logger
from proto import wire
from proto.codec import pb

Handler = Callable[[pb.Envelope, str], pb.Envelope]


class MeshError(Exception):
    """A request that got no valid reply (refused, timed out, garbage, closed early)."""


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly `size` bytes; None on a clean close before the first byte."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if not chunks:
                return None
            raise wire.Dropped("truncated", f"closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket, channel: wire.Channel, check_replay: bool = True) -> pb.Envelope | None:
    """One envelope from `sock`, None at a clean end of stream; raises Dropped or OSError."""
    header = _recv_exactly(sock, wire.FRAME_HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, wire.frame_length(header))
    if body is None:
        raise wire.Dropped("truncated", "no body")
    return channel.open(body, limit=wire.MAX_FRAME, check_replay=check_replay)


def request(
    address: tuple[str, int], envelope: pb.Envelope, timeout: float, channel: wire.Channel | None = None
) -> pb.Envelope:
    """Send `envelope` to a node's mesh port and return its reply (sealed and opened with
    `channel`'s keys; plain without one). Blocks; raises MeshError."""
    channel = channel or wire.Channel("client", 0)
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(channel.frame(envelope))
            reply = read_frame(sock, channel, check_replay=False)  # an answer on our own connection
    except (OSError, wire.Dropped, ValueError) as exc:
        raise MeshError(f"{address[0]}:{address[1]}: {exc}") from None
    if reply is None:
        raise MeshError(f"{address[0]}:{address[1]}: closed without a reply")
    return reply


def ask_peer(
    address: tuple[str, int] | None, envelope: pb.Envelope, timeout: float, channel: wire.Channel
) -> tuple[bool, str]:
    """One request whose answer is an Ack: (accepted, reason). Blocks; never raises, so a pool
    thread running it always reports back."""
    if address is None or not address[1]:
        return False, "no known mesh address"
    try:
        reply = request(address, envelope, timeout, channel)
    except MeshError as exc:
        return False, f"unreachable ({exc})"
    except Exception as exc:  # noqa: BLE001
        return False, f"error ({exc!r})"
    if reply.WhichOneof("body") != "ack":
        return False, "no acknowledgement"
    return reply.ack.accepted, reply.ack.reason


class MeshListener:
    def __init__(
        self,
        host: str,
        port: int,
        channel: wire.Channel,
        read_timeout: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self.channel = channel
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock = socket.create_server((host, port), backlog=128)
        self.host, self.port = self._sock.getsockname()[:2]
        self._handle: Handler | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.stats: dict[str, Any] = {"frames_received": 0, "connections_refused": 0, "dropped": {}}

    def start(self, handle: Handler) -> None:
        """Serve; `handle` runs on connection threads and must answer within the read timeout."""
        self._handle = handle
        self._thread = threading.Thread(target=self._accept_loop, name="mesh-accept", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and drop open connections; safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self.stats, "dropped": dict(self.stats["dropped"]), "port": self.port}

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self.stats["dropped"][reason] = self.stats["dropped"].get(reason, 0) + 1

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, (host, *_rest) = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    self.stats["connections_refused"] += 1
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, host), name="mesh-conn", daemon=True).start()

    def _serve(self, conn: socket.socket, host: str) -> None:
        with self._lock:
            self._connections.add(conn)
        try:
            conn.settimeout(self.read_timeout)
            while not self._closed.is_set():
                envelope = read_frame(conn, self.channel)
                if envelope is None:
                    return
                with self._lock:
                    self.stats["frames_received"] += 1
                reply = self._handle(envelope, host)  # type: ignore[misc]
                conn.sendall(self.channel.frame(reply))
        except wire.Dropped as exc:
            self._count_drop(exc.reason)
        except TimeoutError:
            self._count_drop("read_timeout")
        except OSError:
            self._count_drop("connection_error")
        except Exception:  # noqa: BLE001 - a bug must cost one connection, never the listener
            self._count_drop("internal_error")
            get_logger(component="mesh_listener").exception("mesh_connection_failed", source=host)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()
            self._slots.release()
