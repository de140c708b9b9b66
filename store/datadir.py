"""A node's data directory: its id, its restart counter, its SQLite file, and a lock so two
running nodes never share one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from pathlib import Path

from proto.wire import NODE_ID


class DataDirError(Exception):
    """The data directory cannot be used; the message is one line for the user."""


class DataDir:
    """Owns `<path>` while the node runs (an flock on `<path>/lock`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    @property
    def db_path(self) -> Path:
        return self.path / "mesh.db"

    @property
    def work_dir(self) -> Path:
        """Where jobs run (their working directory)."""
        return self.path / "work"

    def open(self) -> None:
        """Create the directory tree and take the lock; DataDirError if unusable or in use."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(f"data dir {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirError(f"data dir {self.path} is in use by another running node") from None
        if not os.access(self.path, os.W_OK):
            os.close(fd)
            raise DataDirError(f"data dir {self.path}: not writable")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def node_id(self, override: str | None) -> str:
        """`override` if given (and remembered), else the stored id, else a new `node-xxxxxx`."""
        path = self.path / "node_id"
        if override:
            if not NODE_ID.fullmatch(override):
                raise DataDirError(f"node id {override!r}: use letters, digits, '.', '_' or '-' (max 63)")
            path.write_text(override + "\n")
            return override
        if path.exists():
            stored = path.read_text().strip()
            if NODE_ID.fullmatch(stored):
                return stored
        node_id = f"node-{secrets.token_hex(3)}"
        path.write_text(node_id + "\n")
        return node_id

    def next_incarnation(self) -> int:
        """A number that grows by one on every start of the node (peers use it to spot restarts)."""
        path = self.path / "incarnation"
        try:
            previous = int(path.read_text().strip())
        except (OSError, ValueError):
            previous = 0
        # Wall-clock milliseconds keep it growing even if the file is lost; +1 if the clock went back.
        current = max(previous + 1, int(time.time() * 1000))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{current}\n")
        os.replace(tmp, path)
        return current
