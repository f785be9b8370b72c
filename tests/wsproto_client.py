"""The browser's end of a websocket in unit tests: a wsproto client connection on one end of a socket pair."""

from __future__ import annotations

import socket
import time

from wsproto.connection import Connection, ConnectionType


class Client:
    """Masks its frames as a browser does, and parses what the server sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connection = Connection(ConnectionType.CLIENT)

    def send(self, *events) -> None:
        self.sock.sendall(b"".join(self.connection.send(event) for event in events))

    def events(self, count: int = 1) -> list:
        """At least ``count`` events the server sent."""
        received: list = []
        while len(received) < count:
            data = self.sock.recv(65536)
            self.connection.receive_data(data or None)
            received.extend(self.connection.events())
        return received


def receive_soon(websocket, timeout: float = 2.0) -> bytes:
    """``websocket.receive()`` (which never waits) until a message is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = websocket.receive()
        if message is not None:
            return message
        time.sleep(0.002)
    raise AssertionError("no message")
