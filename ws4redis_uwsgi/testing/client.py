"""A websocket test client: a real connection (the ``websockets`` library) with assertions that explain themselves."""

from __future__ import annotations

from types import TracebackType
from typing import Any

try:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import ClientConnection, connect
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ws4redis_uwsgi.testing's live server needs the testing extra: pip install 'ws4redis-uwsgi[testing]'"
    ) from exc

__all__ = ["DEFAULT_TIMEOUT", "HandshakeRefusedError", "WebsocketClient"]

#: Seconds :meth:`WebsocketClient.receive` and :meth:`~WebsocketClient.assert_receives` wait by default.
DEFAULT_TIMEOUT = 5.0


class HandshakeRefusedError(Exception):
    """The server answered the websocket handshake with an HTTP status instead of 101."""

    def __init__(self, url: str, status: int, body: bytes) -> None:
        super().__init__(f"websocket handshake to {url} refused with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class WebsocketClient:
    """One open websocket, as a browser on the site would hold it.

    Made by :meth:`LiveServer.connect <ws4redis_uwsgi.testing.live.LiveServer.connect>`;
    a context manager that closes the connection on exit.
    """

    def __init__(self, url: str, *, headers: dict[str, str], origin: str | None, label: str, timeout: float) -> None:
        self.url = url
        self.label = label
        self.timeout = timeout
        try:
            # Entered as websockets 17 wants (a bare connect() warns); closed by close().
            self._ws: ClientConnection = connect(
                url,
                additional_headers=headers,
                origin=origin,  # type: ignore[arg-type]
                open_timeout=timeout,
                close_timeout=timeout,
            ).__enter__()
        except InvalidStatus as exc:
            raise HandshakeRefusedError(url, exc.response.status_code, bytes(exc.response.body or b"")) from None

    def __repr__(self) -> str:
        return f"<WebsocketClient {self.label}>"

    def __enter__(self) -> WebsocketClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, once the connection is closed (None while open or without one)."""
        rcvd = self._ws.protocol.close_rcvd
        return None if rcvd is None else int(rcvd.code)

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) frame; the query must allow publishing (``publish-broadcast``...)."""
        self._ws.send(message)

    def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message: ``str`` for a text frame, ``bytes`` for a binary one.

        :raises TimeoutError: nothing arrived within ``timeout`` seconds (default :attr:`timeout`).
        :raises websockets.exceptions.ConnectionClosed: the connection closed first.
        """
        wait = self.timeout if timeout is None else timeout
        try:
            return self._ws.recv(timeout=wait)
        except TimeoutError:
            raise TimeoutError(f"{self.label}: nothing received within {wait:g} s") from None

    def assert_receives(self, expected: str | bytes, timeout: float | None = None) -> str | bytes:
        """Fail unless the next message, within ``timeout`` seconds, is ``expected`` (a ``str`` is a text frame)."""
        wait = self.timeout if timeout is None else timeout
        try:
            received = self._ws.recv(timeout=wait)
        except TimeoutError:
            raise AssertionError(f"{self.label}: expected {expected!r} within {wait:g} s, received nothing") from None
        except ConnectionClosed as exc:
            raise AssertionError(f"{self.label}: expected {expected!r}, but {_closed(exc)}") from None
        if received != expected:
            raise AssertionError(f"{self.label}: expected {expected!r}, received {received!r}")
        return received

    def assert_nothing(self, within: float = 0.5) -> None:
        """Fail if a message arrives, or the connection closes, within ``within`` seconds (the one wait that is a sleep)."""
        try:
            received = self._ws.recv(timeout=within)
        except TimeoutError:
            return
        except ConnectionClosed as exc:
            raise AssertionError(f"{self.label}: expected nothing within {within:g} s, but {_closed(exc)}") from None
        raise AssertionError(f"{self.label}: expected nothing within {within:g} s, received {received!r}")

    def wait_closed(self, timeout: float | None = None) -> int | None:
        """Wait until the server closes the connection (messages meanwhile are dropped); its close code."""
        wait = self.timeout if timeout is None else timeout
        try:
            while True:
                self._ws.recv(timeout=wait)
        except TimeoutError:
            raise AssertionError(f"{self.label}: still open after {wait:g} s") from None
        except ConnectionClosed:
            return self.close_code

    def close(self) -> None:
        """Close the connection (with 1000), waiting at most :attr:`timeout` for the server's answer."""
        self._ws.close()


def _closed(exc: Any) -> str:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return "the connection ended without a close frame"
    return f"the server closed the connection with {int(rcvd.code)}" + (f" ({rcvd.reason})" if rcvd.reason else "")
