"""The load generator's websocket framing (bench/wsclient.py): frames in, messages and replies out."""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import wsclient


class Transport:
    """Records what the protocol writes; stands in for the socket's transport."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one masked client frame."""
    assert frame[1] & 0x80, "client frames must be masked"
    n = frame[1] & 0x7F
    mask, body = frame[2:6], frame[6 : 6 + n]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def upgraded(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> tuple[wsclient.WebsocketClient, Transport, list[bytes]]:
    messages: list[bytes] = []
    client = wsclient.WebsocketClient(b"GET / HTTP/1.1\r\n\r\n", key, messages.append)
    transport = Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    accept = wsclient.accept_key(key).decode()
    client.data_received(f"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    assert client.opened.done() and client.opened.exception() is None
    return client, transport, messages


def run(coro_fn):  # the protocol needs a running loop for its futures
    return asyncio.run(coro_fn())


def test_accept_key_is_the_rfc_example() -> None:
    assert wsclient.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455, section 1.3


def test_messages_split_across_reads_and_several_per_read() -> None:
    async def body() -> None:
        client, _, messages = upgraded()
        big = b"x" * 70000
        stream = server_frame(1, b"one") + server_frame(2, b"\x00two") + server_frame(1, big) + server_frame(1, b"y" * 300)
        for i in range(0, len(stream), 7):
            client.data_received(stream[i : i + 7])
        client.data_received(server_frame(1, b"a") + server_frame(1, b"b"))
        assert messages == [b"one", b"\x00two", big, b"y" * 300, b"a", b"b"]

    run(body)


def test_fragmented_message_is_joined() -> None:
    async def body() -> None:
        client, _, messages = upgraded()
        client.data_received(server_frame(1, b"he", fin=False) + server_frame(0, b"ll", fin=False))
        assert messages == []
        client.data_received(server_frame(9, b"p") + server_frame(0, b"o"))  # a ping between fragments
        assert messages == [b"hello"]

    run(body)


def test_ping_gets_a_masked_pong_with_its_payload() -> None:
    async def body() -> None:
        client, transport, _ = upgraded()
        transport.written = b""
        client.data_received(server_frame(9, b"are you there"))
        assert unmask(transport.written) == (0xA, b"are you there")

    run(body)


def test_server_close_is_echoed_once_and_recorded() -> None:
    async def body() -> None:
        client, transport, _ = upgraded()
        transport.written = b""
        client.data_received(server_frame(8, struct.pack("!H", 4000) + b"slow"))
        assert (client.close_code, client.close_reason) == (4000, "slow")
        assert unmask(transport.written) == (0x8, struct.pack("!H", 4000))
        assert transport.closed

    run(body)


def test_masked_server_frame_aborts_with_1002() -> None:
    async def body() -> None:
        client, transport, messages = upgraded()
        client.data_received(bytes([0x81, 0x81, 1, 2, 3, 4, 5]))
        assert client.close_code == 1002 and transport.aborted and messages == []

    run(body)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", 403),
        (b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: wrong\r\n\r\n", 101),
    ],
)
def test_refused_handshake_fails_opened(head: bytes, status: int) -> None:
    async def body() -> None:
        client = wsclient.WebsocketClient(b"GET / HTTP/1.1\r\n\r\n", b"key", lambda m: None)
        transport = Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        client.data_received(head)
        error = client.opened.exception()
        assert isinstance(error, wsclient.HandshakeError) and error.status == status
        assert transport.aborted

    run(body)
