"""What the websocket loop needs from an adapter (uWSGI, the development server) and from the server, as protocols."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.close_codes import CloseCode

if TYPE_CHECKING:
    from ..bus.subscriber import RedisSubscriber
    from ..core.inbound import InboundPolicy

StartResponse = Callable[..., Any]


class Websocket(Protocol):
    """What the loop needs from an adapter's websocket."""

    closed: bool

    def get_file_descriptor(self) -> int: ...
    def receive(self) -> bytes | None: ...  # never blocks; None when nothing waits
    def send(self, message: bytes, binary: bool | None = None) -> None: ...
    def close(self, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None: ...  # never raises for a gone client
    def dispose(self) -> None: ...  # after close: let go of a descriptor the websocket owns

    def direct_writer(self, wake: Callable[[], None]) -> Callable[[bytes], bool] | None:
        """What the hub may call to write a whole frame at once (it returns False when not now), or None.

        ``wake`` has the loop finish a frame the socket took only in part.
        """


class Waiter(Protocol):
    def wait(self, timeout: float | None) -> bool: ...
    def wake(self) -> None: ...
    def close(self) -> None: ...


class LoopServer(Protocol):
    """What a session needs of the server that runs it (:class:`~ws4redis_uwsgi.server.loop.WebsocketWSGIServer`)."""

    stopping: bool

    def start_websocket(self, websocket: Websocket, subscriber: RedisSubscriber, waiter: Any) -> None: ...
    def step(self, websocket: Websocket, subscriber: RedisSubscriber, inbound: InboundPolicy) -> bool: ...
    def end_websocket(self, websocket: Websocket, subscriber: RedisSubscriber) -> None: ...
