"""One actor: MeshActor dispatches by message type and survives a told event that raises."""

from __future__ import annotations

from dataclasses import dataclass

import pykka
import pytest

from actors.base import MeshActor, handles, tell_quietly
from actors.messages import Event, Query


@dataclass(frozen=True)
class Boom(Event):
    pass


@dataclass(frozen=True)
class Ping(Query):
    pass


@dataclass(frozen=True)
class Explode(Query):
    pass


class Fragile(MeshActor):
    @handles(Boom)
    def _boom(self, _message: Boom) -> None:
        raise RuntimeError("a bad event")

    @handles(Ping)
    def _ping(self, _message: Ping) -> str:
        return "pong"

    @handles(Explode)
    def _explode(self, _message: Explode) -> None:
        raise ValueError("a bad query")


def test_an_event_whose_handler_raises_leaves_the_actor_running() -> None:
    ref = Fragile.start()

    ref.tell(Boom())

    assert ref.ask(Ping(), timeout=5) == "pong"


def test_a_query_whose_handler_raises_gives_the_error_to_the_caller_only() -> None:
    ref = Fragile.start()

    with pytest.raises(ValueError, match="a bad query"):
        ref.ask(Explode(), timeout=5)
    assert ref.ask(Ping(), timeout=5) == "pong"


def test_an_unknown_message_is_ignored() -> None:
    ref = Fragile.start()

    assert ref.ask("what is this", timeout=5) is None
    assert ref.is_alive()


def test_telling_a_stopped_actor_quietly_returns_false() -> None:
    ref = Fragile.start()
    ref.stop()

    assert tell_quietly(ref, Boom()) is False
    assert tell_quietly(None, Boom()) is False
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Boom())
