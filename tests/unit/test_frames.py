"""Server frames built once per message: exact bytes for each length encoding (RFC 6455 5.2)."""

import struct

import pytest

from ws4redis_uwsgi.core.envelope import BusMessage
from ws4redis_uwsgi.core.frames import server_frame


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e" + struct.pack("!H", 126)),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),
    ],
)
def test_text_frame_header_for_each_length(length, header):
    payload = b"a" * length
    assert server_frame(payload) == header + payload


def test_binary_frame_opcode():
    assert server_frame(b"\xff\x00", binary=True) == b"\x82\x02\xff\x00"


def test_a_bus_message_frame_is_built_once_for_every_plain_client():
    message = BusMessage(b"hello", binary=False, id="17-3", channel="c", uid="u")
    assert message.frame is message.frame  # cached: one frame per process, not per client
    assert message.frame == b"\x81\x05hello"  # the payload alone: no id, channel or uid
    assert BusMessage(b"\xff", binary=True).frame == b"\x82\x01\xff"
