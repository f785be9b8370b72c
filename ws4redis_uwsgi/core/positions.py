"""Where a resuming client is in each of its channels, as one short opaque token: pure encoding.

Every channel's history is a Redis stream with ids of its own (``"<ms>-<seq>"``,
assigned on the shard that owns the channel), so there is no id shared by all
channels and no key written by every publish. What a client has received is
therefore a *position per channel*: the id of the last message it got there,
or, for a channel where it got none, the moment it arrived.

A client keeps one value, the token in front of its last frame, and sends it
back as ``resume=<token>``. The token lists the client's positions::

    <base>.<tag><delta>[-<seq>].<tag><delta>[-<seq>]...[._<uid>]

``base`` is the newest position's milliseconds; every channel then takes its
``tag`` (4 characters naming the channel, a hash of its name), how many
milliseconds its position is behind ``base``, and the sequence part when it is
not 0; all numbers in base 36. A message published to several channels has a
copy with its own id in each; the uids of the last such messages, and of
durable messages (which the outbox may publish again), follow
(:data:`TOKEN_UIDS`, 12 or 23 characters each), so that a copy not yet seen
on another channel, or published again, is not sent after a resume. So a token is 8
characters plus 6 to 14 per channel (plus 13 or 24 per uid): about 40 for a page
on its user, session and broadcast channels. It is ASCII without ``\\n`` or
``&`` and needs no URL quoting.

Tokens of earlier versions were one id for all channels (``"<ms>-<seq>"``);
they are still read, as that position on every channel.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Order = tuple[int, int]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
TAG_LENGTH = 4
#: Uids of multi-channel messages a token carries.
TOKEN_UIDS = 2
#: Longest token accepted: a client on 100 channels stays well below it.
MAX_TOKEN_LENGTH = 2000
_LEGACY = re.compile(r"([0-9]{1,15})-([0-9]{1,15})")  # ASCII digits only (\d takes any script's)
_PART = re.compile(r"([0-9a-z]{4})([0-9a-z]{1,10})(?:-([0-9a-z]{1,10}))?")
_BASE = re.compile(r"[0-9a-z]{1,10}")
_UID_PART = re.compile(r"_([A-Za-z0-9_-]{1,32})")


def _b36(number: int) -> str:
    if number == 0:
        return "0"
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_DIGITS[rest])
    return "".join(reversed(digits))


@functools.lru_cache(maxsize=4096)
def channel_tag(channel: str) -> str:
    """Four base-36 characters naming ``channel`` in a token: the same in every process."""
    number = int.from_bytes(hashlib.blake2b(channel.encode("utf-8"), digest_size=4).digest(), "big") % 36**TAG_LENGTH
    return _b36(number).rjust(TAG_LENGTH, "0")


def encode_token(positions: Iterable[tuple[str, Order]], uids: Iterable[str] = ()) -> str:
    """The token for ``(channel, position)`` pairs and the uids of recent multi-channel messages (see the module docstring)."""
    pairs = [(channel_tag(channel), order) for channel, order in positions]
    base = max((ms for _, (ms, _) in pairs), default=0)
    parts = [_b36(base)]
    for tag, (ms, seq) in sorted(pairs):
        parts.append(f"{tag}{_b36(base - ms)}-{_b36(seq)}" if seq else f"{tag}{_b36(base - ms)}")
    parts.extend(f"_{uid}" for uid in uids)
    return ".".join(parts)


@dataclass(frozen=True)
class Token:
    """A token read back: positions by channel tag, or one position for every channel (an earlier version's)."""

    by_tag: Mapping[str, Order]
    everywhere: Order | None = None
    #: Uids of the last multi-channel messages the client got, oldest first.
    uids: tuple[str, ...] = ()

    def positions(self, channels: Iterable[str]) -> tuple[dict[str, Order], list[str]]:
        """The position of each of ``channels`` the token knows, and the channels it cannot tell apart.

        Two channels of one client whose tags collide (about one pair in 1.7
        million) cannot take a position from the token: they are returned
        as unknown, and the client is told of a gap rather than given a guess.
        """
        channels = list(channels)
        if self.everywhere is not None:
            return {c: self.everywhere for c in channels}, []
        tags: dict[str, list[str]] = {}
        for channel in channels:
            tags.setdefault(channel_tag(channel), []).append(channel)
        known: dict[str, Order] = {}
        ambiguous: list[str] = []
        for tag, named in tags.items():
            if len(named) > 1:
                ambiguous.extend(named)
            elif tag in self.by_tag:
                known[named[0]] = self.by_tag[tag]
        return known, ambiguous


def decode_token(token: str) -> Token:
    """Read a token; ValueError for anything that is not one."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError("resume token too long")
    legacy = _LEGACY.fullmatch(token)
    if legacy is not None:
        return Token({}, (int(legacy[1]), int(legacy[2])))
    base_text, *parts = token.split(".")
    if not _BASE.fullmatch(base_text) or (not parts and base_text != "0"):  # "0": a client without channels
        raise ValueError(f"not a resume token: {token[:40]!r}")
    base = int(base_text, 36)
    by_tag: dict[str, Order] = {}
    uids: list[str] = []
    for part in parts:
        uid = _UID_PART.fullmatch(part)
        if uid is not None:
            uids.append(uid[1])
            continue
        match = _PART.fullmatch(part)
        if match is None:
            raise ValueError(f"not a resume token: {token[:40]!r}")
        delta = int(match[2], 36)
        if delta > base:
            raise ValueError("resume token with a position before 1970")
        by_tag[match[1]] = (base - delta, int(match[3], 36) if match[3] else 0)
    return Token(by_tag, uids=tuple(uids[-TOKEN_UIDS:]))
