"""Websocket frames (RFC 6455, section 5.2): pure.

The hub builds each message's frame once per worker process and writes the
same bytes to every websocket that takes the fast path, instead of framing
it again for every client. Frames from clients are parsed by wsproto;
:class:`MessageSizeLimit` bounds what a client's frames may announce.
"""

from __future__ import annotations

import struct

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

TEXT = 0x1
BINARY = 0x2


def server_frame(payload: bytes, binary: bool = False) -> bytes:
    """One unmasked, final data frame carrying ``payload``."""
    head = 0x80 | (BINARY if binary else TEXT)
    length = len(payload)
    if length < 126:
        return bytes((head, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", head, 126, length) + payload
    return struct.pack("!BBQ", head, 127, length) + payload


_NO_RSV = RsvBits(False, False, False)


class MessageSizeLimit(Extension):
    """Refuses a message (1009) as soon as its frame headers announce more than ``max_size`` bytes.

    Not an extension a client negotiates: it uses wsproto's extension hook
    for frame headers, which sees each frame's length before its payload
    arrives, so an oversized message is refused before any of it is held,
    and the fragments of a message count together.
    """

    name = "ws4redis-uwsgi-message-size"

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._size = 0  # announced so far for the message under way

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False  # never offered in a handshake

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            return _NO_RSV
        self._size = self._size + payload_length if opcode is Opcode.CONTINUATION else payload_length
        return CloseReason.MESSAGE_TOO_BIG if self._size > self.max_size else _NO_RSV
