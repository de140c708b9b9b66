"""Run one shell command in its own process group, with capped output, a timeout and cancel.

No actor here: `ProcessRunner.run()` blocks and is called from a job's helper thread; `cancel()` is
safe from any thread. The contract, relied on by the executor and documented in the README:

- `/bin/sh -c COMMAND` in a new session (so its own process group), stdin from /dev/null.
- stdout and stderr are read concurrently as bytes; at most `output_cap` bytes of each are kept,
  the rest is read and thrown away so the job never blocks on a full pipe.
- On timeout or cancel: SIGTERM to the whole group, `grace` seconds, then SIGKILL to the group.
- When the shell itself exits, whatever it left running in its group is killed (SIGKILL): a job is
  its process group, and a finished job leaves nothing behind. Output still in the pipes is kept.
- `run()` returns only once no process of the group can run any more (at most GROUP_EXIT_WAIT
  seconds after the final SIGKILL), so "the job is over" means its processes are gone.
- A process that escaped the group (setsid) and holds the pipes open cannot keep the job alive:
  after the shell is gone we wait at most EOF_LINGER seconds for end-of-file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from proto.codec import pb, utcnow

EOF_LINGER = 0.5
_READ_CHUNK = 65536
_POLL = 0.05  # only where pidfd_open is missing
GROUP_EXIT_WAIT = 1.0  # after the final SIGKILL, how long run() waits for the group to be gone
_GONE_POLL = 0.005


@dataclass(frozen=True)
class ProcessSpec:
    command: str
    env: Mapping[str, str]
    cwd: str
    timeout: float
    grace: float
    output_cap: int
    user: str | None = None  # run as this user (the node must be root)


@dataclass(frozen=True)
class ProcessOutcome:
    status: int  # pb.JobStatus: COMPLETED, FAILED, TIMEOUT or CANCELLED
    exit_code: int | None  # None when the process never started; 128+N when killed by signal N
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: datetime
    finished_at: datetime
    error: str


class _Capped:
    """A byte buffer that keeps the first `cap` bytes and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))


_live_groups: set[int] = set()  # process groups of running jobs, for kill_all_groups()
_live_lock = threading.Lock()


def kill_all_groups() -> int:
    """SIGKILL every running job's group at once; for a node that must exit right now (a second
    signal). Safe from a signal handler's thread. Returns how many groups were signalled."""
    with _live_lock:
        groups = list(_live_groups)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    return len(groups)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


_BOOT_ID = _boot_id()


def process_token(pid: int) -> str:
    """Who `pid` is: this boot's id and the process's start time, so a pid reused by another
    process after a crash is never mistaken for it. "" when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            start = stat.read().rpartition(b")")[2].split()[19].decode()  # field 22: start, clock ticks
    except (OSError, IndexError):
        return ""
    return f"{_BOOT_ID}:{start}"


def kill_leftover_group(pgid: int, token: str) -> bool:
    """After a crash: SIGKILL the group of a job the node was running, if its leader is still the
    same process (`token`). Returns True if a group was signalled."""
    if not token or process_token(pgid) != token:
        return False
    _signal_group(pgid, signal.SIGKILL)
    return True


def _identity(user: str | None) -> dict[str, object]:
    """Popen arguments that drop to `user` (its uid, primary gid and no other groups)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_running(pgid: int) -> bool:
    """True while a process of group `pgid` can still run (zombies, already dead, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return True  # no /proc: a zombie is as alive as anything else to kill()
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold anything, so split after the last ')'.
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Block until no process of the group can run, at most `timeout` seconds.

    SIGKILL is delivered asynchronously: a killed process closes its pipes (so we saw EOF) a moment
    before it is really gone, and under load that moment is long enough to be seen.
    """
    deadline = time.monotonic() + timeout
    while _group_running(pgid) and time.monotonic() < deadline:
        time.sleep(_GONE_POLL)


def _exit_code(returncode: int) -> int:
    """Shell convention: a process killed by signal N reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class ProcessRunner:
    """One job's process. `run()` blocks until the whole group is gone; `cancel()` from any thread."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.outcome: ProcessOutcome | None = None  # set when run() returns
        self._wake_r, self._wake_w = os.pipe()
        self._cancel_lock = threading.Lock()
        self._cancel_reason: str | None = None
        self._cancel_grace: float | None = None
        self._wake_closed = False

    def cancel(self, reason: str, grace: float | None = None) -> None:
        """Ask the running job to stop: SIGTERM to its group now, SIGKILL after the grace."""
        with self._cancel_lock:
            if self._cancel_reason is None:
                self._cancel_reason = reason
                self._cancel_grace = grace
            # Under the lock: once run() has closed the wake pipe its descriptor numbers may
            # belong to someone else (a socket, the database), so never write after that.
            if not self._wake_closed:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")

    def run(self, on_spawn: Callable[[int, str], None] | None = None) -> ProcessOutcome:
        """Run the command to the end; never raises for anything the command does.

        `on_spawn(pgid, token)` is called once the group exists (token: see process_token)."""
        started_at = utcnow()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.spec.command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(self.spec.env),
                cwd=self.spec.cwd,
                start_new_session=True,
                close_fds=True,
                bufsize=0,
                **_identity(self.spec.user),
            )
        except (OSError, ValueError) as exc:
            self._close_wake()
            self.outcome = ProcessOutcome(
                pb.JOB_FAILED,
                None,
                b"",
                b"",
                False,
                False,
                started_at,
                utcnow(),
                f"could not start: {exc}",
            )
            return self.outcome
        with _live_lock:
            _live_groups.add(proc.pid)
        if on_spawn is not None:
            on_spawn(proc.pid, process_token(proc.pid))
        try:
            self.outcome = self._supervise(proc, started_at)
        finally:
            with _live_lock:
                _live_groups.discard(proc.pid)
            self._close_wake()
        return self.outcome

    # -- internals ------------------------------------------------------------------------------

    def _close_wake(self) -> None:
        with self._cancel_lock:
            if self._wake_closed:
                return
            self._wake_closed = True
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _supervise(self, proc: subprocess.Popen[bytes], started_at: datetime) -> ProcessOutcome:
        watch = _Watch(proc, self.spec, self._wake_r)
        try:
            while watch.step(self._cancel_request):
                pass
        finally:
            watch.close()
        return watch.outcome(started_at)

    def _cancel_request(self) -> tuple[str, float | None] | None:
        with self._cancel_lock:
            if self._cancel_reason is None:
                return None
            return self._cancel_reason, self._cancel_grace


class _Watch:
    """The state of one supervised process group; `step()` waits for the next thing to happen."""

    def __init__(self, proc: subprocess.Popen[bytes], spec: ProcessSpec, wake_fd: int) -> None:
        self.proc = proc
        self.spec = spec
        self.pgid = proc.pid  # the session leader's pid is the group id
        self.wake_fd = wake_fd
        self.out_fd = proc.stdout.fileno()  # type: ignore[union-attr]
        self.err_fd = proc.stderr.fileno()  # type: ignore[union-attr]
        self.buffers = {self.out_fd: _Capped(spec.output_cap), self.err_fd: _Capped(spec.output_cap)}
        self.open_fds = set(self.buffers)
        self.sel = selectors.DefaultSelector()
        for fd in (*self.buffers, wake_fd):
            self.sel.register(fd, selectors.EVENT_READ)
        self.pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self.pidfd = os.pidfd_open(proc.pid)
                self.sel.register(self.pidfd, selectors.EVENT_READ)
        self.deadline = time.monotonic() + spec.timeout
        self.kill_at: float | None = None  # set once SIGTERM went out
        self.killed = False
        self.eof_deadline: float | None = None  # set once the shell has exited
        self.stop_status: int | None = None
        self.stop_error = ""

    def step(self, cancel_request: Callable[[], tuple[str, float | None] | None]) -> bool:
        """Act on the clock and on whatever is ready; False once the job is over."""
        now = time.monotonic()
        if self.eof_deadline is None and self._leader_exited():
            _signal_group(self.pgid, signal.SIGKILL)  # the leader is a zombie: pgid is still ours
            self.eof_deadline = now + EOF_LINGER
        if self.eof_deadline is not None and (not self.open_fds or now >= self.eof_deadline):
            return False
        if self.stop_status is None and now >= self.deadline:
            self._terminate(pb.JOB_TIMEOUT, f"timed out after {self.spec.timeout:g}s", self.spec.grace, now)
        if self.kill_at is not None and not self.killed and now >= self.kill_at:
            _signal_group(self.pgid, signal.SIGKILL)
            self.killed = True
        for key, _ in self.sel.select(self._next_wait(now)):
            if key.fd == self.wake_fd:
                os.read(self.wake_fd, 512)
                cancel = cancel_request()  # read after the wake byte, so a cancel is never missed
                if cancel is not None and self.stop_status is None:
                    grace = self.spec.grace if cancel[1] is None else cancel[1]
                    self._terminate(pb.JOB_CANCELLED, cancel[0], grace, time.monotonic())
            elif key.fd in self.open_fds:
                chunk = os.read(key.fd, _READ_CHUNK)
                if chunk:
                    self.buffers[key.fd].add(chunk)
                else:
                    self.sel.unregister(key.fd)
                    self.open_fds.discard(key.fd)
        return True

    def close(self) -> None:
        """Kill whatever is left of the group, reap the shell, wait for the group to be gone,
        close every descriptor."""
        _signal_group(self.pgid, signal.SIGKILL)
        self.proc.wait()
        _wait_group_gone(self.pgid, GROUP_EXIT_WAIT)
        self.sel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]

    def outcome(self, started_at: datetime) -> ProcessOutcome:
        returncode = self.proc.returncode
        exit_code = _exit_code(returncode)
        if self.stop_status is not None:
            status, error = self.stop_status, self.stop_error
        elif returncode == 0:
            status, error = pb.JOB_COMPLETED, ""
        elif returncode < 0:
            status, error = pb.JOB_FAILED, f"killed by signal {signal.Signals(-returncode).name}"
        else:
            status, error = pb.JOB_FAILED, f"exited with code {exit_code}"
        out, err = self.buffers[self.out_fd], self.buffers[self.err_fd]
        return ProcessOutcome(
            status, exit_code, bytes(out.data), bytes(err.data), out.dropped > 0, err.dropped > 0,
            started_at, utcnow(), error,
        )  # fmt: skip

    def _terminate(self, status: int, error: str, grace: float, now: float) -> None:
        self.stop_status, self.stop_error = status, error
        _signal_group(self.pgid, signal.SIGTERM)
        self.kill_at = now + grace

    def _leader_exited(self) -> bool:
        """True once the shell has exited; it is left a zombie (not reaped) so its pgid stays ours."""
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is None:
            return False
        if self.pidfd is not None:
            self.sel.unregister(self.pidfd)
        return True

    def _next_wait(self, now: float) -> float:
        moments = [m for m in (self.eof_deadline, None if self.killed else self.kill_at) if m is not None]
        if self.stop_status is None:
            moments.append(self.deadline)
        wait = max(0.0, min(moments) - now) if moments else 1.0
        if self.pidfd is None and self.eof_deadline is None:
            wait = min(wait, _POLL)
        return wait
