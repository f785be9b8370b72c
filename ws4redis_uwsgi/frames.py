"""Server-to-client websocket frames (RFC 6455, section 5.2): pure.

The hub builds each message's frame once per worker process and writes the
same bytes to every websocket that takes the fast path, instead of framing
it again for every client.
"""

from __future__ import annotations

import struct

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
