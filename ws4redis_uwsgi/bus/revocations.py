"""Tokens of a session that ended: a logout refuses the websocket tokens issued from that session.

A token lives ``WS4REDIS_TOKEN_MAX_AGE`` seconds; Django's
``user_logged_out`` signal marks the session's reference in Redis for as
long, and a handshake with a token from that session is refused (403).
Sessions that end without a logout (deleted or expired by other means) are
not marked: their tokens expire by themselves within that time.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from .. import settings
from ..core.channels import prefix_string
from ..django.tokens import session_ref
from . import resources
from .connection import get_client

logger = logging.getLogger("ws4redis_uwsgi")


def revocation_key(ref: str) -> str:
    return f"{prefix_string(settings.get('WS4REDIS_PREFIX'))}ws4redis:token-revoked:{ref}"


def revoke_session(session_key: str) -> None:
    """Refuse the tokens issued from ``session_key`` from now on (for as long as they could live)."""
    get_client().set(revocation_key(session_ref(session_key)), 1, ex=max(1, int(settings.get("WS4REDIS_TOKEN_MAX_AGE"))))


def is_revoked(ref: str) -> bool:
    """Whether the session ``ref`` names ended since the token was issued."""
    return bool(resources.command_client().exists(revocation_key(ref)))


def on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """Django's ``user_logged_out``: the session's tokens end with it."""
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None)
    if not session_key:
        return
    try:
        revoke_session(session_key)
    except redis.RedisError as exc:
        # The logout itself must not fail; the tokens still expire by themselves.
        logger.warning("websocket tokens of a session that logged out not revoked (%s); they expire by themselves", exc)
