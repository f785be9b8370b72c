"""A lean websocket client for the load generators: asyncio protocol, RFC 6455 framing, nothing else.

Why not the ``websockets`` library the tests use: a load generator must cost
less per message than the server it measures, or the figures describe the
client. ``websockets`` spends about 40 µs of client CPU per received message
(an asyncio task wake-up, a frame object and a decoded ``str`` each);
this protocol parses frames straight out of ``data_received`` and hands the
payload bytes to a callback, a few µs per message. It speaks only what a
receiving client needs: the opening handshake (with the accept key checked),
unmasked server frames (text, binary, continuation), pings answered with
pongs, and the closing handshake. Client frames are masked as RFC 6455 asks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import ClassVar, cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: The largest response head accepted before the handshake counts as failed.
MAX_HEAD = 16384


class HandshakeError(Exception):
    """The server did not switch protocols; ``status`` is its HTTP status (0 when there was none)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # RFC 6455 mandates SHA-1


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked client frame (payloads under 126 bytes: pongs, closes and small messages)."""
    if len(payload) > 125:
        raise ValueError("client_frame is for control-sized payloads")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


class WebsocketClient(asyncio.Protocol):
    """One client connection. ``on_message(payload)`` gets every complete text or binary message.

    ``opened`` resolves when the server answered 101 with the right accept key
    (or fails with HandshakeError); ``closed`` resolves when the connection is
    gone, and ``close_code`` then holds the server's close code (1006 when the
    connection ended without a closing handshake).
    """

    #: Pings answered with a pong by every client of this process (the keep-alive the server really sent).
    pings_answered: ClassVar[int] = 0

    __slots__ = (
        "_buffer",
        "_close_sent",
        "_fragments",
        "_key",
        "_request",
        "_upgraded",
        "close_code",
        "close_reason",
        "closed",
        "on_message",
        "opened",
        "transport",
    )

    def __init__(self, request: bytes, key: bytes, on_message: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._key = key
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._upgraded = False
        self._close_sent = False
        self.on_message = on_message
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        #: The reason of the server's close frame ("" without one).
        self.close_reason = ""
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered subclasses of asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            buffer = self._buffer
            if buffer:
                buffer += data
                self._parse(buffer)
            else:
                # The common case: one or more whole frames in one read, no copy into the buffer.
                rest = self._parse(memoryview(data))
                if rest:
                    buffer += rest
            return
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail(HandshakeError(0, "response head too large"))
            return
        head = bytes(self._buffer[:head_end]).decode("latin-1")
        rest = bytes(self._buffer[head_end + 4 :])
        self._buffer.clear()
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            self._fail(HandshakeError(status, parts[2] if len(parts) > 2 else "no status"))
            return
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        if headers.get("sec-websocket-accept", "").encode() != accept_key(self._key):
            self._fail(HandshakeError(101, "wrong Sec-WebSocket-Accept"))
            return
        self._upgraded = True
        self.opened.set_result(None)
        if rest:
            self.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(0, f"connection lost ({exc or 'closed by the server'})"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- framing -------------------------------------------------------------------------------

    def _parse(self, data: memoryview | bytearray) -> bytes:
        """Consume the whole frames in ``data``; returns the bytes of an incomplete last frame.

        When ``data`` is the protocol's own buffer, it is trimmed in place instead.
        """
        size = len(data)
        pos = 0
        while size - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", data, pos + 2)
                start = pos + 10
            if b1 & 0x80:
                self._protocol_error("masked frame from the server")
                return b""
            end = start + length
            if end > size:
                break
            payload = bytes(data[start:end])
            pos = end
            opcode = b0 & 0x0F
            if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                if b0 & 0x80:
                    if self._fragments is not None:
                        self._fragments.append(payload)
                        payload = b"".join(self._fragments)
                        self._fragments = None
                    self.on_message(payload)
                elif self._fragments is None:
                    self._fragments = [payload]
                else:
                    self._fragments.append(payload)
            elif opcode == OP_PING:
                if self.transport is not None:
                    self.transport.write(client_frame(OP_PONG, payload))
                    WebsocketClient.pings_answered += 1
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
                if self.transport is not None:
                    if not self._close_sent:  # echo the code, as RFC 6455 section 5.5.1 asks
                        self._close_sent = True
                        self.transport.write(client_frame(OP_CLOSE, payload[:2]))
                    self.transport.close()
                return b""
        if isinstance(data, bytearray):
            del data[:pos]
            return b""
        return bytes(data[pos:])

    def _protocol_error(self, reason: str) -> None:
        self.close_code = 1002
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    # -- the user's side -----------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(OP_TEXT, text.encode()))

    async def close(self, code: int = 1000, timeout: float = 2.0) -> None:
        """The closing handshake: our close frame, then wait for the server's (or abort after ``timeout``)."""
        if self.transport is None or self.closed.done():
            return
        if not self._close_sent:
            self._close_sent = True
            self.transport.write(client_frame(OP_CLOSE, struct.pack("!H", code)))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    host: str,
    port: int,
    path: str,
    on_message: Callable[[bytes], None],
    *,
    origin: str | None = None,
    cookie: str | None = None,
    timeout: float = 30.0,
    source: str | None = None,
) -> WebsocketClient:
    """Open one websocket to ``ws://host:port/path``; raises HandshakeError or OSError on failure.

    ``source``: the local address to connect from (``127.0.0.x``): one source address has
    one range of ephemeral ports (``net.ipv4.ip_local_port_range``, about 28,000) towards a
    server's address and port, so more connections than that need several.
    """
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, client = await loop.create_connection(
            lambda: WebsocketClient(request, key, on_message), host, port, local_addr=(source, 0) if source else None
        )
        try:
            await client.opened
        except BaseException:
            client.abort()
            raise
    return client
