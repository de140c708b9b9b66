"""SettledWatch: lets web threads wait for a job to reach a final status without polling.

The StoreActor fires a job id when it settles it; `GET /jobs/<id>?wait=N` waits on that. Thread-safe.
"""

from __future__ import annotations

import threading


class SettledWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[threading.Event]] = {}

    def waiter(self, job_id: str) -> threading.Event:
        """An Event set when `job_id` settles; register it *before* reading the job's status."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append(event)
        return event

    def forget(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id, [])
            if event in waiters:
                waiters.remove(event)
            if not waiters:
                self._waiters.pop(job_id, None)

    def fire(self, job_id: str) -> None:
        """Called by the StoreActor after committing a final status."""
        with self._lock:
            waiters = self._waiters.pop(job_id, [])
        for event in waiters:
            event.set()
