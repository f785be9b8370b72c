"""How a message travels on the Redis bus: pure encoding and decoding.

Most messages travel as their raw bytes, exactly as ws4redis published them,
so other programs may PUBLISH to (and read from) the same channels. Only a
message that carries something the bytes cannot say is wrapped:

* ``binary=True``: the publisher wants a binary frame even for valid UTF-8;
* an origin: the connection that published it, so the server can leave the
  sender out when it did not ask for ``echo`` (decided by identity, never by
  comparing text).

A wrapped message is ``MAGIC + flags + b"|" + origin + b"\\n" + payload``.
``MAGIC`` starts with a NUL byte, which no text message and hardly any binary
format starts with; a raw payload that does start with ``MAGIC`` is wrapped
too, so decoding is never ambiguous for messages sent by this package.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"\x00ws4r\x00"


@dataclass(frozen=True)
class BusMessage:
    """One message as the websocket side sees it."""

    payload: bytes
    binary: bool = False
    origin: str | None = None

    @property
    def is_text(self) -> bool:
        """True when the message goes out as a text frame."""
        return not self.binary


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode(payload: bytes, *, binary: bool = False, origin: str | None = None) -> bytes:
    """Bytes to PUBLISH for ``payload``; raw unless metadata must travel along."""
    if not binary and origin is None and not payload.startswith(MAGIC):
        return payload
    if origin is not None and ("\n" in origin or "|" in origin):
        raise ValueError("origin must not contain '|' or a newline")
    flags = b"b" if binary else b""
    return MAGIC + flags + b"|" + (origin or "").encode("ascii") + b"\n" + payload


def decode(data: bytes) -> BusMessage:
    """Turn bytes received from the bus (or a persisted key) into a :class:`BusMessage`.

    Bytes that are not valid UTF-8 always become a binary message, since a
    text frame must carry UTF-8.
    """
    if data.startswith(MAGIC):
        header, sep, payload = data[len(MAGIC) :].partition(b"\n")
        flags, bar, origin = header.partition(b"|")
        if sep and bar:
            binary = b"b" in flags or not is_utf8(payload)
            return BusMessage(payload, binary, origin.decode("ascii", "replace") or None)
    return BusMessage(data, not is_utf8(data))
