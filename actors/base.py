"""The base every mesh actor shares: typed messages dispatched to handlers, told events guarded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pykka

from actors.logs import get_logger
from actors.messages import Event

M = TypeVar("M")


def handles(message_type: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of `message_type` on a MeshActor."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method._handles = message_type  # type: ignore[attr-defined]
        return method

    return mark


class MeshActor(pykka.ThreadingActor):
    """A ThreadingActor whose `on_receive` dispatches on the message's type.

    Events (subclasses of `messages.Event`, always sent with tell) are guarded: an exception is
    logged and the actor goes on, because pykka stops an actor on an exception in a told message.
    Queries (asked) propagate their exception to the caller, which is what pykka does anyway.
    """

    _handlers: ClassVar[dict[type, Callable[..., Any]]] = {}
    use_daemon_thread = True  # a wedged actor must never keep the process from exiting

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                message_type = getattr(attr, "_handles", None)
                if message_type is not None:
                    table[message_type] = attr
        cls._handlers = table

    def __init__(self, **log_fields: Any) -> None:
        super().__init__()
        self.log = get_logger(actor=type(self).__name__, **log_fields)

    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            self.log.warning("unknown_message", message_type=type(message).__name__)
            return None
        if isinstance(message, Event):
            try:
                return handler(self, message)
            except Exception:
                self.log.exception("event_handler_failed", message_type=type(message).__name__)
                return None
        return handler(self, message)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self.log.error("actor_failed", error=repr(exception_value))


def tell_quietly(ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
    """Tell `message` to `ref`; False (instead of ActorDeadError) when the actor has stopped.

    Safe from any thread; used by helper threads, which must outlive their actor quietly.
    """
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
