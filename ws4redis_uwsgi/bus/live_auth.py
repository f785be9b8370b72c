"""Live authorization, Django's side: signals about sessions, users and groups become control messages.

The websocket workers (:mod:`ws4redis_uwsgi.server.authority`) close a
session's websockets with 4001 when it ends, and re-subscribe a user's when
the groups change. They learn of it here, over Redis
(:mod:`ws4redis_uwsgi.core.control`):

* ``user_logged_out``, and ``post_delete`` of a session row (``db`` and
  ``cached_db`` engines: a flush, a delete, ``clearsessions``) end the session;
* a session row of a logged-in user deleted right after (within
  :data:`CYCLE_WINDOW`, in the same thread) a new one was created with the
  same data is Django's ``cycle_key`` (login, ``update_session_auth_hash``
  after a password change): the websockets stay, and follow the new key;
* ``post_save`` of a user (other than Django's ``last_login`` update) makes
  the workers look again at the user's sessions: a new password ends the
  other sessions, a user made inactive all of them; ``post_delete`` ends them;
* ``m2m_changed`` of ``User.groups`` (either side), a group renamed or
  deleted: the members' websockets subscribe again.

Messages made while a request is served go out when it has finished (after
the session middleware saved the session): a password change then reaches
the workers together with the new session, never before it. Elsewhere they
go out when the transaction commits (at once outside one), and never after
a rollback. What Django sends no signal for (the ``cache`` engine's
deletes, a raw ``UPDATE``) is found by the workers' periodic re-check.

A Redis that cannot be reached never makes the request fail: the message
is lost with a log line, and the re-check catches up.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib import import_module
from typing import Any

import redis
from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.signals import user_logged_out
from django.core.signals import request_finished, request_started
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from .. import settings
from ..core.control import Command, Verb, control_channel, moved_to, ordered
from ..django.tokens import seal_key, session_ref
from .connection import get_client, is_cluster, sharded

logger = logging.getLogger("ws4redis_uwsgi")

_state = threading.local()

#: Seconds between a session's creation and another's deletion within which they are one ``cycle_key()``
#: (which does both at once): a session key given up for a new one with the same data.
CYCLE_WINDOW = 0.5
#: Seconds a request's commands wait for its end at most.
REQUEST_HOLD = 10.0
#: Seconds between two log lines about commands Redis did not take.
LOG_INTERVAL = 60.0


class _Lost:
    """Commands lost since the last log line, and when that was."""

    count = 0
    logged = -LOG_INTERVAL


_lost = _Lost()


def connect() -> None:
    """Connect the receivers (from the app's ``ready()``)."""
    user_model = get_user_model()
    user_logged_out.connect(_on_logout, dispatch_uid="ws4redis_uwsgi.live_auth.logout")
    post_save.connect(_on_user_saved, sender=user_model, dispatch_uid="ws4redis_uwsgi.live_auth.user_saved")
    post_delete.connect(_on_user_deleted, sender=user_model, dispatch_uid="ws4redis_uwsgi.live_auth.user_deleted")
    session_model = _session_model()
    if session_model is not None:
        post_save.connect(_on_session_saved, sender=session_model, dispatch_uid="ws4redis_uwsgi.live_auth.session_saved")
        post_delete.connect(_on_session_deleted, sender=session_model, dispatch_uid="ws4redis_uwsgi.live_auth.session_deleted")
    groups = getattr(user_model, "groups", None)
    if groups is not None:
        m2m_changed.connect(_on_groups_changed, sender=groups.through, dispatch_uid="ws4redis_uwsgi.live_auth.groups")
        group_model = groups.field.related_model
        post_save.connect(_on_group_saved, sender=group_model, dispatch_uid="ws4redis_uwsgi.live_auth.group_saved")
        pre_delete.connect(_on_group_deleted, sender=group_model, dispatch_uid="ws4redis_uwsgi.live_auth.group_deleted")
    request_started.connect(_on_request_started, dispatch_uid="ws4redis_uwsgi.live_auth.request_started")
    request_finished.connect(_on_request_finished, dispatch_uid="ws4redis_uwsgi.live_auth.request_finished")


def _session_model() -> Any:
    """The model of the session engine's rows (``db``, ``cached_db``), or None (``cache``, ``signed_cookies``)."""
    store = import_module(django_settings.SESSION_ENGINE).SessionStore
    get_model = getattr(store, "get_model_class", None)
    return get_model() if get_model is not None else None


# -- sending ---------------------------------------------------------------------------


def publish(commands: list[Command]) -> None:
    """Send ``commands`` to every websocket worker now (a Redis failure is logged, never raised)."""
    if not commands:
        return
    client = get_client()
    channel = control_channel(settings.get("WS4REDIS_PREFIX"), sharded=sharded())
    command = "SPUBLISH" if is_cluster(client) else "PUBLISH"
    try:
        pipe = client.pipeline(transaction=False)
        for item in ordered(commands):
            pipe.execute_command(command, channel, item.encode())
        pipe.execute()
    except redis.RedisError as exc:
        # One line per LOG_INTERVAL at most: a Redis away while users are saved would flood the log.
        _lost.count += len(commands)
        now = time.monotonic()
        if now - _lost.logged >= LOG_INTERVAL:
            logger.warning(
                "websocket workers not told of %d session/user change(s) (%s); their re-check will find them", _lost.count, exc
            )
            _lost.count, _lost.logged = 0, now


def _send(command: Command, using: str | None = None) -> None:
    """Send ``command`` once the transaction commits: at the end of the request when one is served.

    A request that has not finished after :data:`REQUEST_HOLD` seconds holds
    nothing more (a server or test client that never closes its responses
    would otherwise hold every later command of the thread).
    """
    pending: list[Command] | None = getattr(_state, "pending", None)
    if pending is not None and time.monotonic() - _state.started > REQUEST_HOLD:
        _state.pending = None
        publish(pending)  # what it held was committed already
        pending = None
    if pending is not None:
        transaction.on_commit(lambda: pending.append(command), using=using)
    else:
        transaction.on_commit(lambda: publish([command]), using=using)


def _on_request_started(**kwargs: Any) -> None:
    _state.pending = []
    _state.started = time.monotonic()
    _state.created = None


def _on_request_finished(**kwargs: Any) -> None:
    pending = getattr(_state, "pending", None)
    _state.pending = _state.held = None
    _state.created = None
    if pending:
        publish(pending)


# -- receivers -----------------------------------------------------------------------


def _on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        _send(Command(Verb.END, session_ref(session_key)))


def _on_session_saved(sender: Any, instance: Any, created: bool = False, using: str | None = None, **kwargs: Any) -> None:
    if created:
        # Remembered for a delete that follows in this thread: that is cycle_key() (see _on_session_deleted).
        _state.created = (instance.session_key, _decoded(instance), time.monotonic())


def _on_session_deleted(sender: Any, instance: Any, using: str | None = None, **kwargs: Any) -> None:
    created = getattr(_state, "created", None)
    _state.created = None
    data = _decoded(instance)
    if not data or SESSION_KEY not in data:
        return  # no user's session (as login() gives up an anonymous one): no websocket stands on it
    ref = session_ref(instance.session_key)
    if created is not None and _is_cycle(instance, *created):
        sealed = seal_key(instance.session_key, created[0])
        if sealed is not None:
            _send(Command(Verb.MOVED, ref, moved_to(session_ref(created[0]), sealed)), using)
            return
    _send(Command(Verb.END, ref), using)


def _is_cycle(deleted: Any, new_key: str, new_data: dict[str, Any] | None, created_at: float) -> bool:
    """Whether deleting ``deleted`` is Django's ``cycle_key()``: right after a session with the same user and data was made."""
    if deleted.session_key == new_key or time.monotonic() - created_at > CYCLE_WINDOW or not new_data:
        return False
    return SESSION_KEY in new_data and _decoded(deleted) == new_data


def _decoded(instance: Any) -> dict[str, Any] | None:
    try:
        data = instance.get_decoded()
    except Exception:  # data that does not decode has no user
        return None
    return data if isinstance(data, dict) else None


def _on_user_saved(sender: Any, instance: Any, created: bool = False, update_fields: Any = None, **kwargs: Any) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return  # a new user has no websockets; login() saves last_login alone
    _send(Command(Verb.USER, str(instance.pk)), kwargs.get("using"))


def _on_user_deleted(sender: Any, instance: Any, using: str | None = None, **kwargs: Any) -> None:
    _send(Command(Verb.GONE, str(instance.pk)), using)


def _on_groups_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any = None, using: str | None = None, **kwargs: Any
) -> None:
    if action == "pre_clear" and reverse:
        # Which users a group is about to lose: post_clear does not say.
        _state.clearing = [str(pk) for pk in instance.user_set.values_list("pk", flat=True)]
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        users = [str(instance.pk)]
    elif action == "post_clear":
        users = getattr(_state, "clearing", None) or []
        _state.clearing = None
    else:
        users = [str(pk) for pk in pk_set or ()]
    for pk in users:
        _send(Command(Verb.GROUPS, pk), using)


def _on_group_saved(sender: Any, instance: Any, created: bool = False, using: str | None = None, **kwargs: Any) -> None:
    if not created:  # a new name is a new channel for every member
        _members_changed(instance, using)


def _on_group_deleted(sender: Any, instance: Any, using: str | None = None, **kwargs: Any) -> None:
    _members_changed(instance, using)


def _members_changed(group: Any, using: str | None) -> None:
    for pk in group.user_set.values_list("pk", flat=True):
        _send(Command(Verb.GROUPS, str(pk)), using)
