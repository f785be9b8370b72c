"""How a message travels on the Redis bus, and message ids: pure encoding and decoding.

A message travels as its raw bytes, exactly as ws4redis published them, unless
it carries something the bytes cannot say; then it is wrapped:

* ``binary=True``: the publisher wants a binary frame even for valid UTF-8;
* an origin: the connection that published it, so the server can leave the
  sender out when it did not ask for ``echo`` (decided by identity, never by
  comparing text);
* an id: its place in the channel's history, so a client that reconnects can
  ask for exactly what it missed (see :mod:`ws4redis_uwsgi.bus.history`);
* a uid, for a message published to several channels at once: a client on
  more than one of them gets it once (each channel's copy has its own id);
  and for every message of the durable outbox (:mod:`ws4redis_uwsgi.bus.durable`),
  on any number of channels, with history or without: the outbox may
  publish it more than once (after a crash), and a client gets it once.
  Durable uids are longer (:func:`is_durable_uid`), so a websocket on one
  channel remembers those alone.

A wrapped message is ``MAGIC + flags + b"|" + sender + b"|" + id + b"\\n" + payload``,
where ``sender`` is the origin, followed by ``/`` and the uid when there is one
(so that workers of earlier versions, during a rolling upgrade, still read it
as an origin that is not theirs).
``MAGIC`` starts with a NUL byte, which no text message and hardly any binary
format starts with; a raw payload that does start with ``MAGIC`` is wrapped
too, so decoding is never ambiguous for messages sent by this package. Other
programs may still PUBLISH raw bytes: they arrive as they are, without an id.
Bytes that start with ``MAGIC`` but are not a well-formed wrapped message
(another program imitating the wrapping) are refused: :func:`decode` raises
:class:`MalformedMessageError`, and the receiving side drops them with a log line.

Message ids are Redis stream ids, ``"<milliseconds>-<sequence>"``, assigned
per channel by the shard that owns it: they grow with every publish on that
channel and follow that Redis's clock. An id far ahead of that clock
(:func:`plausible_id`) did not come from the publish script: trusting it would
make every later message look old to the clients that saw it.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .frames import server_frame

MAGIC = b"\x00ws4r\x00"

_ID = re.compile(r"([0-9]{1,15})-([0-9]{1,15})")
_ID_BYTES = re.compile(rb"[0-9]{1,15}-[0-9]{1,15}")
#: An origin field: visible ASCII without '|' (see :func:`encode_parts`).
_ORIGIN = re.compile(rb"[\x21-\x7b\x7d\x7e]{0,128}")
#: A uid: what :func:`new_uid` makes, or close to it.
_UID = re.compile(r"[A-Za-z0-9_-]{1,32}")

#: How far (ms) an id may be ahead of Redis's clock, as a worker measures it, and still be trusted.
#: Ids come from Redis's own clock (the publish script reads TIME and XADDs under it), so a
#: genuine id is ahead of a worker's measure of that clock only by the measure's error: half a
#: round trip, and the drift of the two clocks since (a worker measures each Redis again when it
#: connects, and before it drops an id that looks ahead); after a failover, by the difference
#: between the old master's clock and the new one's, which NTP keeps far below this. An id
#: further ahead came from another program: trusted, it would make every later message on its
#: channel look old to the clients that got it, until the clock passed it. The publish script,
#: too, stops following a stream whose newest id is further ahead: it starts the stream again,
#: and resuming clients are told of a gap.
MAX_ID_AHEAD_MS = 2_000


class MalformedMessageError(ValueError):
    """Bytes on the bus that imitate this package's wrapping without being a wrapped message."""


@dataclass(frozen=True)
class BusMessage:
    """One message as the websocket side sees it."""

    payload: bytes
    binary: bool = False
    origin: str | None = None
    id: str | None = None
    #: The channel it came on (its id is a position in that channel's history).
    channel: str | None = None
    #: Set when it was published to several channels (the same on each copy) or through the durable outbox.
    uid: str | None = None
    #: A notice of the server's own (``!join\n<username>``...): sent as it is, never behind a token.
    notice: bool = False

    @cached_property
    def order(self) -> tuple[int, int] | None:
        """The id as a comparable value, or None for a message without id."""
        return parse_id(self.id) if self.id else None

    @cached_property
    def frame(self) -> bytes:
        """The websocket frame for a plain client, built once however many receive it."""
        return server_frame(self.payload, self.binary)

    @cached_property
    def _last_token_frame(self) -> list[Any]:
        return [None, b""]

    def frame_with_token(self, token: str) -> bytes:
        """The websocket frame for a resuming client whose token is ``token`` (:func:`with_token`).

        The last one is kept: the resuming clients of one channel (and no
        other) all get the same token with a message, so the frame is built
        once for them as it is for plain clients.
        """
        last = self._last_token_frame
        if last[0] != token:
            last[0], last[1] = token, server_frame(with_token(token, self.payload), self.binary)
        return last[1]  # type: ignore[no-any-return]


def with_token(token: str, payload: bytes) -> bytes:
    """A message as a resuming client receives it: its resume token, a newline, the payload."""
    return token.encode("ascii") + b"\n" + payload


def new_uid() -> str:
    """A uid for a message published to several channels: 64 random bits, 11 characters."""
    return base64.urlsafe_b64encode(os.urandom(8)).rstrip(b"=").decode("ascii")


#: Length of a durable message's uid (:func:`new_durable_uid`); :func:`new_uid` makes 11 characters.
DURABLE_UID_LENGTH = 22


def new_durable_uid() -> str:
    """A uid for a message of the durable outbox: 128 random bits, 22 characters."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def is_durable_uid(uid: str) -> bool:
    """Whether ``uid`` is a durable message's: a copy may come again on the same channel, under another id."""
    return len(uid) == DURABLE_UID_LENGTH


def plausible_id(order: tuple[int, int], redis_now_ms: int) -> bool:
    """False for an id too far ahead of Redis's clock (``redis_now_ms``) to come from the publish script."""
    return order[0] <= redis_now_ms + MAX_ID_AHEAD_MS


def parse_id(message_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` as ``(1700000000000, 3)``; ValueError for anything else."""
    match = _ID.fullmatch(message_id)
    if match is None:
        raise ValueError(f"not a message id: {message_id!r}")
    return int(match[1]), int(match[2])


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def outgoing(message: bytes | str, binary: bool | None = None) -> tuple[bytes, bool]:
    """The payload of a message a websocket sends, and whether it goes as a binary frame.

    ``str`` is text unless ``binary`` says otherwise; ``bytes`` are text when
    they are UTF-8, as ws4redis sent them, unless ``binary`` is true. Bytes
    that are not UTF-8 always go binary: a text frame must be UTF-8.
    """
    if isinstance(message, str):
        return message.encode("utf-8"), bool(binary)
    return message, bool(binary) or not is_utf8(message)


def encode_parts(
    payload: bytes, *, binary: bool = False, origin: str | None = None, uid: str | None = None
) -> tuple[bytes, bytes]:
    """The wrapped message around a yet unknown id: ``head + id + tail``.

    The publish script in Redis assigns the id and joins the three, so the
    format is decided here only.
    """
    if origin is not None and ("/" in origin or not _ORIGIN.fullmatch(origin.encode("ascii", "replace"))):
        raise ValueError("origin must be visible ASCII without '|' or '/', 128 characters at most")
    if uid is not None and not _UID.fullmatch(uid):
        raise ValueError("uid must be 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'")
    sender = (origin or "") + (f"/{uid}" if uid else "")
    if len(sender) > 128:
        raise ValueError("origin and uid take 128 characters at most")
    flags = b"b" if binary else b""
    return MAGIC + flags + b"|" + sender.encode("ascii") + b"|", b"\n" + payload


def encode(
    payload: bytes, *, binary: bool = False, origin: str | None = None, id: str | None = None, uid: str | None = None
) -> bytes:
    """Bytes to PUBLISH for ``payload``: raw unless metadata must travel along."""
    if not binary and origin is None and id is None and uid is None and not payload.startswith(MAGIC):
        return payload
    head, tail = encode_parts(payload, binary=binary, origin=origin, uid=uid)
    return head + (id or "").encode("ascii") + tail


def decode(data: bytes | str, channel: str | None = None) -> BusMessage:
    """Turn bytes received from the bus (or a persisted key) into a :class:`BusMessage`.

    Bytes that are not valid UTF-8 always become a binary message, since a
    text frame must carry UTF-8. (``str`` only comes from a client made with
    ``decode_responses=True``.)

    :raises MalformedMessageError: ``data`` starts with ``MAGIC`` but is not a
        message this package wrapped (bad flags, origin or id).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data.startswith(MAGIC):
        return BusMessage(data, not is_utf8(data), channel=channel)
    header, sep, payload = data[len(MAGIC) :].partition(b"\n")
    fields = header.split(b"|")
    if not sep or len(fields) not in (2, 3):
        raise MalformedMessageError("wrapped message without its header")
    flags, origin = fields[0], fields[1]
    message_id = fields[2] if len(fields) == 3 else b""
    if flags not in (b"", b"b"):
        raise MalformedMessageError("unknown flags in a wrapped message")
    if not _ORIGIN.fullmatch(origin):
        raise MalformedMessageError("malformed origin in a wrapped message")
    if message_id and not _ID_BYTES.fullmatch(message_id):
        raise MalformedMessageError("malformed id in a wrapped message")
    sender, _, uid = origin.decode("ascii").partition("/")
    if uid and not _UID.fullmatch(uid):
        raise MalformedMessageError("malformed uid in a wrapped message")
    binary = flags == b"b" or not is_utf8(payload)
    return BusMessage(payload, binary, sender or None, message_id.decode("ascii") or None, channel, uid or None)
