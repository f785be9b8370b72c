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


def test_bus_message_frames_are_built_once_and_carry_the_id_for_resuming_clients():
    message = BusMessage(b"hello", binary=False, id="17-3")
    assert message.frame is message.frame  # cached: one frame per process, not per client
    assert message.frame == b"\x81\x05hello"
    assert message.frame_with_id == b"\x81\x0a17-3\nhello"
    assert BusMessage(b"x").frame_with_id == b"\x81\x02\nx"  # no id: an empty header line
