"""The detached uWSGI websocket's own framing (ws4redis_uwsgi.detached) against a wsproto client over a socket pair.

Under uWSGI these websockets leave their request after the handshake, so
reading, pings and closing are done here instead of by uWSGI; the
integration tests run them under a real uWSGI worker.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from ws4redis_uwsgi.close_codes import CloseCode
from ws4redis_uwsgi.detached import DetachedWebsocket, unmask
from ws4redis_uwsgi.exceptions import WebSocketError


class Client:
    """The browser's end: a wsproto client connection (masking its frames) on one end of a socket pair."""

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


@pytest.fixture
def pair() -> Iterator[tuple[DetachedWebsocket, Client]]:
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)  # as uWSGI's client sockets are
    client_sock.settimeout(5)
    websocket = DetachedWebsocket(os.dup(server_sock.fileno()), max_size=1000)
    server_sock.close()  # the websocket holds its own descriptor, as after uWSGI closed the request's
    yield websocket, Client(client_sock)
    websocket.dispose()
    client_sock.close()


def receive_soon(websocket: DetachedWebsocket, timeout: float = 2.0) -> bytes:
    """receive() until a message is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = websocket.receive()
        if message is not None:
            return message
        time.sleep(0.002)
    raise AssertionError("no message")


def test_unmask_is_rfc_6455_masking():
    mask = b"\x01\x02\x03\x04"
    data = bytes(range(11))
    assert unmask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(unmask(data, mask), mask) == data
    assert unmask(b"", mask) == b""


def test_nothing_waiting_gives_none(pair):
    websocket, _ = pair
    assert websocket.receive() is None


def test_text_and_binary_arrive_as_bytes_in_order(pair):
    websocket, client = pair
    client.send(TextMessage(data="grüße"), BytesMessage(data=b"\xff\x00"), TextMessage(data="x" * 300))
    assert receive_soon(websocket) == "grüße".encode()
    assert receive_soon(websocket) == b"\xff\x00"
    assert receive_soon(websocket) == b"x" * 300  # a 16-bit length
    assert websocket.receive() is None


def test_a_frame_split_across_reads_arrives_whole(pair):
    websocket, client = pair
    frame = client.connection.send(TextMessage(data="split in three"))
    for part in (frame[:1], frame[1:5], frame[5:]):
        assert websocket.receive() is None
        client.sock.sendall(part)
        time.sleep(0.01)
    assert receive_soon(websocket) == b"split in three"


def test_unmasked_client_frames_are_read_as_uwsgi_reads_them(pair):
    websocket, client = pair
    client.sock.sendall(b"\x81\x05hello")
    assert receive_soon(websocket) == b"hello"


def test_a_fragmented_message_arrives_whole_with_a_ping_in_between(pair):
    websocket, client = pair
    client.send(TextMessage(data="one ", message_finished=False), Ping(payload=b"hi"))
    assert websocket.receive() is None  # a fragment is not a message
    assert client.events() == [Pong(payload=b"hi")]
    client.send(TextMessage(data="two", message_finished=True))
    assert receive_soon(websocket) == b"one two"


def test_a_continuation_without_a_message_ends_the_websocket(pair):
    websocket, client = pair
    client.sock.sendall(b"\x80\x01x")
    with pytest.raises(WebSocketError):
        receive_soon(websocket)


def test_a_message_over_the_limit_closes_with_1009_before_it_is_read(pair):
    websocket, client = pair
    client.send(TextMessage(data="x" * 600, message_finished=False), TextMessage(data="y" * 600))
    assert websocket.receive() is None
    assert websocket.closed
    (event,) = client.events()
    assert isinstance(event, CloseConnection) and event.code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    ("message", "binary", "expected"),
    [
        ("text", None, TextMessage(data="text")),
        ("text", True, BytesMessage(data=b"text")),
        (b"utf-8 bytes", None, TextMessage(data="utf-8 bytes")),
        (b"utf-8 bytes", True, BytesMessage(data=b"utf-8 bytes")),
        (b"\xff\xfe", None, BytesMessage(data=b"\xff\xfe")),
        ("x" * 70000, None, TextMessage(data="x" * 70000)),  # a 64-bit length
    ],
)
def test_send_picks_text_or_binary_as_uwsgi_does(pair, message, binary, expected):
    websocket, client = pair
    websocket.send(message, binary=binary)
    received = client.events()
    while not received[-1].message_finished:
        received += client.events()
    assert {type(event) for event in received} == {type(expected)}
    assert expected.data == received[0].data[:0].join(event.data for event in received)


def test_a_client_close_is_answered_with_its_code_and_ends_receiving(pair):
    websocket, client = pair
    client.send(TextMessage(data="last words"), CloseConnection(code=1001, reason="leaving"))
    assert receive_soon(websocket) == b"last words"
    with pytest.raises(WebSocketError):
        receive_soon(websocket)
    (answer,) = client.events()
    assert answer.code == 1001
    assert client.connection.state is ConnectionState.CLOSED
    websocket.close()  # the server's own close after the loop sends nothing more
    client.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.sock.recv(1)


def test_the_end_of_the_connection_ends_receiving(pair):
    websocket, client = pair
    client.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(WebSocketError):
        receive_soon(websocket)


def test_close_sends_the_code_and_waits_for_the_client(pair):
    websocket, client = pair
    websocket.close(CloseCode.SERVICE_RESTART, "server restart")
    (event,) = client.events()
    assert (event.code, event.reason) == (CloseCode.SERVICE_RESTART, "server restart")
    with pytest.raises(WebSocketError):
        websocket.receive()


def test_keep_alive_pings_as_uwsgi_does_and_gives_up_on_a_silent_client(pair):
    websocket, client = pair
    assert websocket.keep_alive(100.0, ping_freq=30, pong_tolerance=3)  # the first round pings
    assert client.events() == [Ping(payload=b"")]
    client.send(Pong(payload=b""))
    assert receive_soon_or_none(websocket) is None
    assert websocket.keep_alive(110.0, ping_freq=30, pong_tolerance=3)  # answered: the next ping after 30 s
    client.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.sock.recv(1)
    client.sock.setblocking(True)
    assert websocket.keep_alive(time.monotonic() + 31, ping_freq=30, pong_tolerance=3)
    assert client.events() == [Ping(payload=b"")]
    # This one is not answered.
    assert websocket.keep_alive(time.monotonic() + 33, ping_freq=30, pong_tolerance=3)
    assert not websocket.keep_alive(time.monotonic() + 35, ping_freq=30, pong_tolerance=3)
    with pytest.raises(WebSocketError):
        websocket.receive()


def receive_soon_or_none(websocket: DetachedWebsocket) -> bytes | None:
    """receive() after the client's frames had time to arrive."""
    time.sleep(0.05)
    return websocket.receive()
