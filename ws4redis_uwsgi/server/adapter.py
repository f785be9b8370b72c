"""What the websocket loop needs from an adapter (uWSGI, the development server) and from the server, as protocols."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.close_codes import CloseCode

if TYPE_CHECKING:
    from ..bus.subscriber import DirectWriter, RedisSubscriber
    from ..core.inbound import InboundPolicy

StartResponse = Callable[..., Any]

logger = logging.getLogger("ws4redis_uwsgi")


class Websocket(Protocol):
    """What the loop needs from an adapter's websocket."""

    closed: bool

    def get_file_descriptor(self) -> int: ...
    def receive(self) -> bytes | None: ...  # never blocks; None when nothing waits
    def send(self, message: bytes, binary: bool | None = None) -> None: ...
    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None: ...  # never raises for a gone client
    def dispose(self) -> None: ...  # after close: let go of a descriptor the websocket owns

    def direct_writer(self, wake: Callable[[], None]) -> DirectWriter | None:
        """What the hub may write whole frames to at once, or None.

        ``wake`` has the loop finish a frame the socket took only in part.
        """


class Waiter(Protocol):
    def wait(self, timeout: float | None) -> bool: ...
    def wake(self) -> None: ...
    def close(self) -> None: ...


class LoopServer(Protocol):
    """What a session needs of the server that runs it (:class:`~ws4redis_uwsgi.server.loop.WebsocketWSGIServer`)."""

    stopping: bool
    restart_spread: float

    def start_websocket(self, websocket: Websocket, subscriber: RedisSubscriber, waiter: Any) -> None: ...
    def step(self, websocket: Websocket, subscriber: RedisSubscriber, inbound: InboundPolicy) -> bool: ...
    def end_websocket(self, websocket: Websocket, subscriber: RedisSubscriber) -> None: ...


def close_for_rule(websocket: Websocket, code: CloseCode, reason: str, detail: object = None) -> None:
    """Close ``websocket`` for a rule its client broke (a limit, the protocol), with a warning in the log.

    One helper, so that every adapter and the loop close and log alike;
    ``detail`` (what the parser said, say) goes into the log only.
    """
    if detail is None:
        logger.warning("closing websocket (%d, %s)", code, reason)
    else:
        logger.warning("closing websocket (%d, %s): %s", code, reason, detail)
    websocket.close(code, reason)
