"""Live authorization, the worker's side: close a session's websockets when it ends, follow group changes.

Each worker knows the websockets of logged-in users it serves, by session
and by user. It listens on the control channel
(:mod:`ws4redis_uwsgi.core.control`) through its hub, so that is no extra
Redis connection, and acts:

* ``end``, ``gone``: the websockets of that session, or of that user, close
  with 4001 at once (no database);
* ``moved``: the session got a new key (Django's ``cycle_key``): its
  websockets stay and follow the key (its session channel too);
* ``user``, ``groups``: the user's websockets are looked at again on the
  worker's database greenlets, batched: repeats of one user between two
  batches cost one look, and users without websockets here cost nothing.
  A session that no longer lets the user in (deleted, expired, another
  password, user inactive or gone) closes with 4001; new groups are
  subscribed, old ones left, without a reconnect.

Each watched websocket is looked at again within ``WS4REDIS_SESSION_RECHECK``
seconds of the last time its session and user were read, and every one when
the control channel was down: that bounds the delay for what Django sends no
signal for (the ``cache`` engine's deletes, a raw ``UPDATE``). The rounds
come four times per period and take only the websockets read more than
three quarters of it ago: a websocket that lives less than that (a page of
a multi-page site) costs no second look, and a burst of handshakes does not
come back as one burst of looks.

Each command first evicts what the worker's identity cache
(:mod:`ws4redis_uwsgi.django.identity_cache`) holds for that session or
user, whether or not the worker serves it a websocket now; the cache serves
nothing while the control channel's subscription is not confirmed, and is
emptied when it was down. What it holds for a session with a websocket open
here does not expire, and gets ``WS4REDIS_IDENTITY_CACHE`` seconds more when
the last one closes: the next page's websocket opens on what kept the
previous one open.
"""

from __future__ import annotations

import logging
import time
from importlib import import_module
from typing import Any

import gevent
from django.conf import settings as django_settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.core.exceptions import ValidationError
from django.utils.crypto import constant_time_compare
from gevent.event import Event

from .. import process, settings
from ..bus import revocations
from ..bus.connection import sharded
from ..bus.resources import get_hub
from ..bus.subscriber import Grant, RedisSubscriber
from ..core import control
from ..core.channels import Audience
from ..core.envelope import BusMessage
from ..django import auth_lookup
from ..django.identity import cache_seconds
from ..django.identity_cache import get_identity_cache
from ..django.tokens import TokenError, current_user_and_groups, open_sealed_key
from .db_workers import get_workers

logger = logging.getLogger("ws4redis_uwsgi")

#: Seconds the worker gathers ``user`` and ``groups`` commands before it looks at the users again.
BATCH_DELAY = 0.05
#: Periodic rounds per ``WS4REDIS_SESSION_RECHECK``; each looks at the websockets read more than
#: ``ROUNDS - 1`` of them ago, so none waits longer than the setting from its last read.
ROUNDS = 4
#: Seconds the worker waits at its start for Redis to confirm the control channel before it says that
#: evictions reach it (identity claims are taken from then on); later, the confirmation's resync says it.
CONFIRM_WAIT = 30.0


class Authority:
    """This worker's websockets of logged-in users, and what it does when Django says their session or user changed."""

    def __init__(self) -> None:
        self._by_ref: dict[str, set[RedisSubscriber]] = {}
        self._by_user: dict[str, set[RedisSubscriber]] = {}
        self._pending: set[str] = set()  # users to look at again
        self._everyone = False  # look at every watched websocket again
        self._wake = Event()
        self._listening = False
        self._channel = ""
        self._runner: gevent.Greenlet | None = None
        #: Websockets closed because their session ended (for tests and metrics).
        self.ended = 0

    # -- websockets arrive and leave ------------------------------------------------------

    def watch(self, subscriber: RedisSubscriber) -> None:
        """Follow ``subscriber``'s session and user from now on (it has a :class:`Grant`)."""
        grant = subscriber.grant
        if grant is None:
            return
        self._index(subscriber, grant)
        self.listen()

    def listen(self) -> None:
        """Subscribe the control channel (once): from the worker's start, or its first logged-in websocket."""
        if not self._listening:
            self._listening = True
            self._channel = control.control_channel(settings.get("WS4REDIS_PREFIX"), sharded=sharded())
            get_hub().add(self, [self._channel])
            self._runner = gevent.spawn(self._run)
            cache = get_identity_cache()
            cache.live = self.hearing
            cache.held = self._by_ref.__contains__

    def hearing(self) -> bool:
        """Whether commands reach this worker now: Redis confirmed the control channel's subscription."""
        return self._listening and get_hub().confirmed([self._channel])

    def forget(self, subscriber: RedisSubscriber) -> None:
        grant = subscriber.grant
        if grant is not None:
            self._unindex(subscriber, grant)

    def _index(self, subscriber: RedisSubscriber, grant: Grant) -> None:
        self._by_user.setdefault(grant.user_pk, set()).add(subscriber)
        if grant.ref is not None:
            self._by_ref.setdefault(grant.ref, set()).add(subscriber)

    def _unindex(self, subscriber: RedisSubscriber, grant: Grant) -> None:
        for index, key in ((self._by_user, grant.user_pk), (self._by_ref, grant.ref)):
            if key is None:
                continue
            members = index.get(key)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del index[key]
                    if index is self._by_ref:  # its last websocket here: what it read is kept a while more
                        get_identity_cache().release(key, cache_seconds())

    # -- the control channel (a listener of the hub) ------------------------------------------

    def deliver(self, message: BusMessage) -> None:
        command = control.decode(message.payload)
        if command is None:
            logger.warning("ignored a message on the control channel that is not a command")
            return
        verb = command.verb
        self._evict(verb, command.subject)
        if verb is control.Verb.END:
            self._end(self._by_ref.get(command.subject))
        elif verb is control.Verb.GONE:
            self._end(self._by_user.get(command.subject))
        elif verb is control.Verb.MOVED:
            self._move(command.subject, command.extra or "")
        else:  # USER, GROUPS: the database says what changed
            if command.subject in self._by_user:
                self._pending.add(command.subject)
                self._wake.set()

    def resync(self) -> None:
        """The control channel was down: commands may have gone by, look at everyone again."""
        cache = get_identity_cache()
        cache.clear()
        cache.hearing_from()  # (called once the channel is confirmed again, or while it is)
        self._everyone = True
        self._wake.set()

    @staticmethod
    def _evict(verb: control.Verb, subject: str) -> None:
        """Forget what handshakes of that session (``end``, ``moved``) or user (the others) read."""
        if verb is control.Verb.END or verb is control.Verb.MOVED:
            get_identity_cache().evict_ref(subject)
        else:
            get_identity_cache().evict_user(subject)

    def _end(self, subscribers: set[RedisSubscriber] | None) -> None:
        for subscriber in tuple(subscribers or ()):
            self._close(subscriber)

    def _close(self, subscriber: RedisSubscriber) -> None:
        if subscriber.grant is not None:
            self._unindex(subscriber, subscriber.grant)
        if not subscriber.session_ended:
            self.ended += 1
            subscriber.end_session()

    def _move(self, ref: str, extra: str) -> None:
        new_ref, sealed = control.moved_parts(extra)
        for subscriber in tuple(self._by_ref.get(ref, ())):
            grant = subscriber.grant
            assert grant is not None
            self._unindex(subscriber, grant)
            if grant.session_key is not None:
                new_key = open_sealed_key(grant.session_key, sealed)
                if new_key is None:
                    self._close(subscriber)
                    continue
                subscriber.reidentify(session_key=new_key)
            else:
                grant.ref = new_ref
            self._index(subscriber, grant)

    # -- looking again, on the database greenlets ---------------------------------------------

    def _run(self) -> None:
        if get_hub().wait_subscribed([self._channel], CONFIRM_WAIT):
            get_identity_cache().hearing_from()  # else resync() says it, once Redis confirms
        interval = float(settings.get("WS4REDIS_SESSION_RECHECK") or 0)
        step = interval / ROUNDS
        next_round = time.monotonic() + step if interval > 0 else None
        while True:
            timeout = None if next_round is None else max(0.0, next_round - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            gevent.sleep(BATCH_DELAY)  # gather a burst of commands into one batch
            now = time.monotonic()
            round_due = next_round is not None and now >= next_round
            if round_due:
                next_round = now + step
            due: list[str] = []
            if self._everyone:
                self._everyone = False
                due = list(self._by_user)
            elif round_due:
                due = self.due(read_before=now - (interval - step))
            self._look_at_pending()
            for pk in due:
                self._look_at(pk)
                self._look_at_pending()  # a command that came meanwhile does not wait for the round
                gevent.sleep(0)

    def due(self, read_before: float) -> list[str]:
        """The users with a websocket here whose session and user were last read before ``read_before``."""
        return [
            pk
            for pk, subscribers in self._by_user.items()
            if any(s.grant is not None and s.grant.read_at < read_before for s in subscribers)
        ]

    def _look_at_pending(self) -> None:
        while self._pending:
            users, self._pending = list(self._pending), set()
            for pk in users:
                self._look_at(pk)
                gevent.sleep(0)

    def _look_at(self, pk: str) -> None:
        """Look again at every websocket of user ``pk``: one look per session, one groups query, however many tabs."""
        looked: dict[Any, Any] = {}
        groups: dict[str, tuple[str, ...]] = {}
        started = time.monotonic()  # what is read from now on is at least this fresh
        for subscriber in tuple(self._by_user.get(pk, ())):
            try:
                self._recheck(subscriber, looked, groups, started)
            except Exception:
                logger.exception("could not look again at the session of a websocket; it stays open")

    def _recheck(
        self, subscriber: RedisSubscriber, looked: dict[Any, Any], groups: dict[str, tuple[str, ...]], started: float
    ) -> None:
        """Close ``subscriber`` if its session no longer lets its user in; else follow the user's groups.

        ``looked`` and ``groups`` keep what was read for other websockets of
        the same session and user, since ``started``.
        """
        grant = subscriber.grant
        if grant is None or subscriber.session_ended:
            return
        key = (grant.session_key, grant.token_hash, grant.ref)
        with_groups = Audience.GROUP in grant.wanted.subscribe | grant.wanted.publish
        if key not in looked:
            looked[key] = get_workers().run(read_again, grant, with_groups)
        user, read_groups = looked[key]
        if user is None:
            # What no signal said (a raw UPDATE, an expiry): no handshake may be served what was read before.
            get_identity_cache().evict_user(grant.user_pk)
            self._close(subscriber)
            return
        grant.read_at = started
        if with_groups:
            if grant.user_pk not in groups:
                # Read with the user where they could be; else (another look of this session read none) on their own.
                if read_groups is None:
                    read_groups = get_workers().run(auth_lookup.group_names, user)
                groups[grant.user_pk] = read_groups
            if groups[grant.user_pk] != grant.groups:
                get_identity_cache().evict_user(grant.user_pk)
                subscriber.reidentify(groups=groups[grant.user_pk])


def read_again(grant: Grant, with_groups: bool) -> tuple[Any, tuple[str, ...] | None]:
    """The user ``grant``'s session or token lets in now, or None (runs on a database greenlet).

    With ``with_groups``, also the user's group names where they came in its query (else None).
    """
    if grant.session_key is None and grant.token_hash is not None:  # a websocket token of this package
        if grant.ref is not None and revocations.is_revoked(grant.ref):
            return None, None
        try:
            return current_user_and_groups(grant.user_pk, grant.token_hash, with_groups)
        except TokenError:
            return None, None
    if grant.session_key is None:  # the site's own scheme (WS4REDIS_PROCESS_REQUEST): the user must still be let in
        user = get_user_model()._default_manager.filter(pk=grant.user_pk).first()
        return (user if user is not None and getattr(user, "is_active", True) else None), None
    store = import_module(django_settings.SESSION_ENGINE).SessionStore(grant.session_key)
    if not auth_lookup.load_session(store):
        store.keys()  # loads it the engine's way: a missing or expired session is empty
    user, groups = session_user_and_groups(store, with_groups)
    if user is None or str(user.pk) != grant.user_pk:
        return None, None
    return user, groups


def session_user_and_groups(session: Any, with_groups: bool) -> tuple[Any, tuple[str, ...] | None]:
    """The user ``session`` lets in now, or None: what ``django.contrib.auth.get_user`` decides, read only.

    Django's own function flushes a session whose hash does not verify, and
    gives a new key to one that verifies only with ``SECRET_KEY_FALLBACKS``:
    a worker looking on must change nothing (the browser's cookie names the key).
    With ``with_groups``, also the user's group names where they came in its query (else None).
    """
    try:
        user_pk = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None, None
    if backend_path not in django_settings.AUTHENTICATION_BACKENDS:
        return None, None
    # The stock ModelBackend, by the compiled query.
    user, groups = auth_lookup.backend_user_and_groups(user_pk, backend_path, with_groups)
    if user is auth_lookup.UNANSWERED:
        user, groups = load_backend(backend_path).get_user(user_pk), None  # None for a user gone, or inactive with ModelBackend
    if user is None or not hasattr(user, "get_session_auth_hash"):
        return user, groups
    session_hash = session.get(HASH_SESSION_KEY)
    if not session_hash:
        return None, None
    hashes = [user.get_session_auth_hash(), *getattr(user, "get_session_auth_fallback_hash", list)()]
    return (user, groups) if any(constant_time_compare(session_hash, h) for h in hashes) else (None, None)


def get_authority() -> Authority:
    """This process's :class:`Authority`."""
    return process.resource("authority", Authority)
