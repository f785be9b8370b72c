"""Short-lived websocket tokens for clients without cookies (mobile apps, other origins).

A view of the site (or :func:`websocket_token`) issues a token for the
logged-in user with :func:`issue_token`; the client offers it when it opens
a websocket, as the subprotocol ``ws4redis.token.<token>`` next to
``ws4redis`` (a header: access logs record URLs, not it). The token is
Django's signing (``SECRET_KEY``, a salt of its own, a timestamp), so it
cannot be forged and expires after ``WS4REDIS_TOKEN_MAX_AGE`` seconds. It
names the user and the hash Django keeps of the user's password (a password
change ends it), optionally the facilities and audiences it may be used
for, and, when issued from a session, a reference to that session, so that
a logout ends the tokens issued from it (see
:mod:`ws4redis_uwsgi.bus.revocations`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError

from .. import settings
from ..core.channels import Audience, validate_facility
from ..core.exceptions import HandshakeError
from . import auth_lookup

SALT = "ws4redis_uwsgi.websocket-token"
#: Characters of the user's session auth hash a token carries.
_HASH_CHARS = 20


class TokenError(ValueError):
    """A token that does not let anyone in: the reason goes to the log, the client gets 403."""


def session_ref(session_key: str) -> str:
    """What a token names its session by: a digest, never the key itself (the page's script sees the token)."""
    return hashlib.sha256(f"ws4redis-session:{session_key}".encode()).hexdigest()[:32]


def _pad(old_key: str) -> bytes:
    """A one-time pad that only a holder of ``old_key`` and ``SECRET_KEY`` can make."""
    from django.conf import settings as django_settings

    secret = str(django_settings.SECRET_KEY).encode()
    return hmac.new(secret, f"ws4redis-moved-session:{old_key}".encode(), hashlib.sha512).digest()


def seal_key(old_key: str, new_key: str) -> str | None:
    """``new_key``, readable only with ``old_key`` and ``SECRET_KEY`` (None: too long to seal)."""
    data = new_key.encode()
    pad = _pad(old_key)
    if len(data) > len(pad):
        return None
    return bytes(a ^ b for a, b in zip(data, pad, strict=False)).hex()


def open_sealed_key(old_key: str, sealed: str) -> str | None:
    """The key :func:`seal_key` sealed, or None when ``sealed`` is not one."""
    try:
        data = bytes.fromhex(sealed)
        pad = _pad(old_key)
        if len(data) > len(pad):
            return None
        return bytes(a ^ b for a, b in zip(data, pad, strict=False)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None


def issue_token(
    user: Any,
    *,
    session_key: str | None = None,
    facilities: Iterable[str] | None = None,
    audiences: Iterable[str] | None = None,
) -> str:
    """A token for ``user``, valid for ``WS4REDIS_TOKEN_MAX_AGE`` seconds.

    :param session_key: the session it is issued from: a logout of that session ends it.
    :param facilities: the facilities it may open (default: any).
    :param audiences: ``'broadcast'``, ``'user'``, ``'group'``: the channels it may
        subscribe and publish to (default: any the user may).
    :raises ValueError: an invalid facility or audience.
    """
    if not getattr(user, "is_authenticated", False):
        raise ValueError("a websocket token is for a logged-in user")
    claims: dict[str, Any] = {"u": str(user.pk), "h": user.get_session_auth_hash()[:_HASH_CHARS]}
    if session_key:
        claims["s"] = session_ref(session_key)
    if facilities is not None:
        try:
            claims["f"] = sorted({validate_facility(f) for f in facilities})
        except HandshakeError as exc:
            raise ValueError(f"invalid facility: {exc}") from None
    if audiences is not None:
        claims["a"] = sorted({Audience(a).value for a in audiences})
    return signing.dumps(claims, salt=SALT, compress=True).replace(":", "~")  # ':' may not be in a subprotocol


@dataclass(frozen=True)
class Claims:
    """What a valid token says."""

    user: Any
    session_ref: str | None
    facilities: frozenset[str] | None
    audiences: frozenset[str] | None
    #: The part of the user's session auth hash it was issued with (a password change ends it).
    auth_hash: str = ""
    #: The user's group names, where they were read with the user (None: not read).
    groups: tuple[str, ...] | None = None

    def allows(self, facility: str, channels: Iterable[str]) -> str | None:
        """Why the token does not allow ``channels`` (``'subscribe-user'``...) on ``facility``, or None."""
        if self.facilities is not None and facility not in self.facilities:
            return "token not valid for this facility"
        if self.audiences is not None:
            for channel in channels:
                if channel.split("-", 1)[1] not in self.audiences:
                    return f"token not valid for {channel}"
        return None


def read_token(token: str) -> Claims:
    """The claims of ``token``, checked against the user as the database has it now.

    :raises TokenError: forged, malformed or expired, or its user is gone,
        inactive or changed the password since.
    """
    try:
        claims = signing.loads(token.replace("~", ":"), salt=SALT, max_age=settings.get("WS4REDIS_TOKEN_MAX_AGE"))
    except signing.SignatureExpired:
        raise TokenError("token expired") from None
    except (signing.BadSignature, ValueError, TypeError):
        raise TokenError("invalid token") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("u"), str) or not isinstance(claims.get("h"), str):
        raise TokenError("invalid token")
    user, groups = current_user_and_groups(claims["u"], claims["h"])
    facilities, audiences = claims.get("f"), claims.get("a")
    return Claims(
        user,
        claims.get("s"),
        frozenset(facilities) if isinstance(facilities, list) else None,
        frozenset(audiences) if isinstance(audiences, list) else None,
        claims["h"],
        groups,
    )


def current_user_and_groups(pk: str, auth_hash: str, with_groups: bool = True) -> tuple[Any, tuple[str, ...] | None]:
    """The user ``pk`` as the database has it now, if a token with ``auth_hash`` still lets them in.

    With ``with_groups``, also the user's sorted group names where they came
    in the same query (else None). The user is read by the handshakes'
    compiled query where it can be
    (:func:`~ws4redis_uwsgi.django.auth_lookup.user_by_key`), else through the ORM.

    :raises TokenError: the user is gone, inactive, or changed the password since.
    """
    user, groups = auth_lookup.user_by_key(pk, with_groups)
    if user is auth_lookup.UNANSWERED:
        groups = None
        try:
            user = get_user_model()._default_manager.filter(pk=pk).first()
        except (ValueError, TypeError, ValidationError):  # a pk the model's field cannot take
            user = None
    if user is None or not getattr(user, "is_active", True):
        raise TokenError("token for a user who is gone or inactive")
    if not hmac.compare_digest(user.get_session_auth_hash()[:_HASH_CHARS], auth_hash):
        raise TokenError("token from before a password change")
    return user, groups
