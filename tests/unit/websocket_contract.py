"""What every websocket adapter does the same way, tested once for each.

A test module that defines a ``pair`` fixture (the server's websocket and a
``tests.wsproto_client.Client``) imports these tests, and pytest runs them
against its adapter: the detached uWSGI websocket and the development
server's wsproto websocket.
"""

from __future__ import annotations

import pytest
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from tests.wsproto_client import receive_soon
from ws4redis_uwsgi.exceptions import WebSocketError


def test_nothing_waiting_gives_none(pair):
    websocket, _ = pair
    assert websocket.receive() is None


@pytest.mark.parametrize(
    ("message", "binary", "expected"),
    [
        ("text", None, TextMessage(data="text")),
        ("text", True, BytesMessage(data=b"text")),
        (b"utf-8 bytes", None, TextMessage(data="utf-8 bytes")),
        (b"utf-8 bytes", True, BytesMessage(data=b"utf-8 bytes")),
        (b"\xff\xfe", None, BytesMessage(data=b"\xff\xfe")),
        (b"\xff\xfe", False, BytesMessage(data=b"\xff\xfe")),  # a text frame must be UTF-8
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
        client.sock.recv(10)
