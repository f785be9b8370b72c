"""What Django tells the websocket workers about sessions, users and groups: the control messages, without I/O.

Live authorization (:mod:`ws4redis_uwsgi.bus.live_auth` sends,
:mod:`ws4redis_uwsgi.server.authority` acts) travels over one Redis channel,
:func:`control_channel`, as short text lines ``<verb> <subject>[ <extra>]``:

``end <ref>``
    the session ``ref`` (:func:`~ws4redis_uwsgi.django.tokens.session_ref`, a
    digest: session keys never go on the bus) ended: logout, flush, delete.
``moved <ref> <new ref>.<sealed new key>``
    the session was given a new key with the same data (Django's
    ``cycle_key``, as ``update_session_auth_hash`` does after a password
    change): its websockets stay, under the new reference (token websockets)
    and the new key (cookie websockets), which travels sealed
    so that only a holder of the old key and ``SECRET_KEY`` can read it
    (:func:`~ws4redis_uwsgi.django.tokens.seal_key`).
``gone <user pk>``
    the user was deleted.
``user <user pk>``
    the user changed (deactivated, a new password...): look again at each of
    the user's websockets.
``groups <user pk>``
    the user's groups changed: subscribe again.

Anything else on the channel is ignored (with a log line by the receiver).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .channels import prefix_string

#: Longest field: a reference is 32 characters, a pk rarely more than 36, a moved key 33 + 2 per key character.
MAX_FIELD = 200


class Verb(Enum):
    END = "end"
    MOVED = "moved"
    GONE = "gone"
    USER = "user"
    GROUPS = "groups"


#: Verbs the workers act on at once (no database): sent before the others of one batch.
IMMEDIATE = frozenset({Verb.END, Verb.MOVED, Verb.GONE})


@dataclass(frozen=True)
class Command:
    verb: Verb
    subject: str
    extra: str | None = None

    def encode(self) -> bytes:
        fields = [self.verb.value, self.subject] + ([self.extra] if self.extra is not None else [])
        for field in fields[1:]:
            if not _valid_field(field):
                raise ValueError(f"invalid control message field {field!r}")
        return " ".join(fields).encode()


def decode(payload: bytes | str) -> Command | None:
    """The command ``payload`` carries, or None when it is not one (never raises)."""
    try:
        text = payload.decode() if isinstance(payload, bytes) else payload
    except UnicodeDecodeError:
        return None
    fields = text.split(" ")
    try:
        verb = Verb(fields[0])
    except ValueError:
        return None
    wanted = 3 if verb is Verb.MOVED else 2
    if len(fields) != wanted or not all(_valid_field(f) for f in fields[1:]):
        return None
    return Command(verb, fields[1], fields[2] if wanted == 3 else None)


def _valid_field(field: str) -> bool:
    return 0 < len(field) <= MAX_FIELD and field.isprintable() and " " not in field


def moved_to(new_ref: str, sealed_key: str) -> str:
    """The extra field of a ``moved`` command."""
    return f"{new_ref}.{sealed_key}"


def moved_parts(extra: str) -> tuple[str, str]:
    """The new reference and the sealed new key of a ``moved`` command's extra field."""
    new_ref, _, sealed = extra.partition(".")
    return new_ref, sealed


def ordered(commands: list[Command]) -> list[Command]:
    """``commands`` without repeats, the immediate ones first (a ``moved`` before the ``user`` check it affects)."""
    unique = list(dict.fromkeys(commands))
    return [c for c in unique if c.verb in IMMEDIATE] + [c for c in unique if c.verb not in IMMEDIATE]


def control_channel(prefix: str | None, *, sharded: bool = False) -> str:
    """The channel of control messages: no audience channel can have this name (see :func:`.channels.channel_name`)."""
    base = "ws4redis:control"
    return f"{prefix_string(prefix)}{{{base}}}" if sharded else f"{prefix_string(prefix)}{base}"
