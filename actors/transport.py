"""The discovery transport: a UDP socket shared by every node on a host, and its reader thread.

`UdpTransport` binds in __init__ (so a bad port fails at start), reads in a helper thread that
hands every datagram to a callback, and sends to broadcast targets. Tests swap it for
`MemoryNetwork.transport()`, which delivers in-process with no socket.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable

from proto.wire import MAX_DATAGRAM

# (data, source host, receiver's monotonic time)
OnDatagram = Callable[[bytes, str, float], None]
Address = tuple[str, int]


class UdpTransport:
    def __init__(self, bind_host: str, port: int) -> None:
        self.port = port
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # REUSEADDR + REUSEPORT: every node on this host binds the same port and, for
            # broadcast, each socket gets its own copy of every datagram.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((bind_host, port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, on_datagram: OnDatagram) -> None:
        """Start the reader thread; `on_datagram` runs on it and must not block."""
        self._thread = threading.Thread(
            target=self._read_loop, args=(on_datagram,), name="discovery-recv", daemon=True
        )
        self._thread.start()

    def send(self, data: bytes, targets: Iterable[Address]) -> list[tuple[Address, OSError]]:
        """Send `data` to each target; returns the ones that failed (never raises)."""
        failures = []
        for target in targets:
            try:
                self.sock.sendto(data, target)
            except OSError as exc:
                failures.append((target, exc))
        return failures

    def close(self) -> None:
        """Stop the reader thread and close the socket; safe to call twice."""
        if self._closed:
            return  # the descriptors may already belong to someone else
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for closer in (self.sock.close, lambda: os.close(self._wake_r), lambda: os.close(self._wake_w)):
            with contextlib.suppress(OSError):
                closer()

    def _read_loop(self, on_datagram: OnDatagram) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fd == self._wake_r:
                        return
                    try:
                        # One byte over the limit, so an oversized datagram is seen as such.
                        data, (host, _port) = self.sock.recvfrom(MAX_DATAGRAM + 1)
                    except OSError:
                        continue
                    on_datagram(data, host, time.monotonic())


class MemoryNetwork:
    """An in-memory broadcast domain for tests: every transport gets every datagram sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[MemoryTransport] = []

    def transport(self, host: str = "127.0.0.1") -> MemoryTransport:
        member = MemoryTransport(self, host)
        with self._lock:
            self._members.append(member)
        return member

    def deliver(self, data: bytes, source: str) -> None:
        with self._lock:
            members = list(self._members)
        for member in members:
            member.receive(data, source)

    def leave(self, member: MemoryTransport) -> None:
        with self._lock:
            if member in self._members:
                self._members.remove(member)


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self.network = network
        self.host = host
        self.port = 0
        self._on_datagram: OnDatagram | None = None
        self.sent: list[bytes] = []

    def start(self, on_datagram: OnDatagram) -> None:
        self._on_datagram = on_datagram

    def send(self, data: bytes, targets: Iterable[Address]) -> list[tuple[Address, OSError]]:
        del targets  # one broadcast domain
        self.sent.append(data)
        self.network.deliver(data, self.host)
        return []

    def receive(self, data: bytes, source: str) -> None:
        if self._on_datagram is not None:
            self._on_datagram(data, source, time.monotonic())

    def close(self) -> None:
        self.network.leave(self)
        self._on_datagram = None
