"""Ticker: a helper thread that tells an actor a message every `period` seconds until stopped.

pykka has no timers; this is the outside loop its docs suggest. The thread never touches actor
state: it only builds the message (with the time it fired) and tells it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from actors.base import tell_quietly


class Ticker:
    def __init__(
        self, ref: pykka.ActorRef[Any], period: float, make: Callable[[float], Any], name: str
    ) -> None:
        self._ref = ref
        self._period = period
        self._make = make
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop and join; safe to call twice and from the actor's own thread."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            if not tell_quietly(self._ref, self._make(time.monotonic())):
                return
