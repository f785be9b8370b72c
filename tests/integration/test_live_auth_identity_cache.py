"""The worker's identity cache with live authorization: reconnects skip the database, Django's signals still win at once.

What a user can see from outside the worker: a session row deleted by raw
SQL (no signal) still lets its cookie in while the worker keeps what it read
(while a websocket of the session is open there, and
``WS4REDIS_IDENTITY_CACHE`` seconds after the read or the last close), and
no longer after; after a logout or a group change (signals) the very next
reconnect is what the database says.
Each test runs with the site on SQLite and on PostgreSQL; those with ``worker``
also with a worker of the test site (its hooks read the session on a database
greenlet) and one of the stock set-up, which serves a session from its cache
before the hop to the database greenlets.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from typing import Any

import pytest

from tests.conftest import SITE_ENV
from tests.integration.helpers import client, facility, recv
from tests.integration.test_live_auth import SECOND, another_worker, closed_with, login, logout, new_user, subscribers
from tests.servers import TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi.core.channels import Audience, channel_name
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

__all__ = ["another_worker"]  # a fixture of the live authorization tests, used here

#: The cache's seconds in the worker of the first test: long enough to reconnect within, short to wait out.
TTL = 3.0 * TIMING


@pytest.fixture(params=["site hooks", "stock"])
def worker(request, site_server, another_worker):
    """A worker of the test site, with its hooks, or one of the stock set-up (``WS4REDIS_TEST_STOCK``)."""
    return site_server if request.param == "site hooks" else another_worker(WS4REDIS_TEST_STOCK="1")


def stock(server) -> bool:
    """Whether ``server`` is a worker of the stock set-up."""
    return server.env.get("WS4REDIS_TEST_STOCK") == "1"


@pytest.fixture
def caching_worker(db_backend, redis_server, tmp_path, request):
    """A worker of its own that keeps what a handshake read for ``TTL`` seconds."""
    env = {**SITE_ENV, "WS4REDIS_TEST_IDENTITY_CACHE": str(TTL)}
    if db_backend == "postgresql":
        env["WS4REDIS_TEST_DB"] = request.getfixturevalue("postgres_site_db")
    with ExitStack() as stack:
        server = UwsgiServer(env, cores=100, log_path=tmp_path / "uwsgi.log").start()
        stack.callback(server.stop)
        # Once a websocket opened, the worker's hub holds its subscriptions: the control
        # channel's among them, asked for first (at the worker's start), so the cache is on.
        with client(server, f"/ws/{facility()}?subscribe-broadcast"):
            pass
        yield server


def a_user_on(fac: str) -> tuple[Any, str, str, str, str]:
    """A new user logged in: the user, the session cookie and key, the user's channel on ``fac``, the path that subscribes it."""
    user = new_user()
    cookie, key = login(user)
    return user, cookie, key, channel_name("test", Audience.USER, fac, user.username), f"/ws/{fac}?subscribe-user"


def raw_sql(sql: str, *params: object) -> None:
    """A statement Django sends no signal for."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def channels_of(fac: str, user, group: str) -> tuple[str, str]:
    return channel_name("test", Audience.USER, fac, user.username), channel_name("test", Audience.GROUP, fac, group)


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
def test_a_session_that_reconnects_within_the_seconds_is_served_without_the_database_and_not_after(caching_worker):
    from django.contrib.auth.models import User
    from django.contrib.sessions.models import Session

    fac, group = facility(), "g" + uuid.uuid4().hex[:8]
    user = new_user(group)
    cookie, key = login(user)
    user_channel, group_channel = channels_of(fac, user, group)
    path = f"/ws/{fac}?subscribe-user&subscribe-group"
    read = time.monotonic()
    with client(caching_worker, path, cookie):  # the worker reads session, user and groups, and keeps them
        assert subscribers(user_channel) == 1 and subscribers(group_channel) == 1
    wait_for(lambda: subscribers(user_channel) == 0, 5, "the websocket's departure")
    # The session row and the group membership go without a signal: only the database knows.
    raw_sql(f"DELETE FROM {Session._meta.db_table} WHERE session_key = %s", key)
    raw_sql(f"DELETE FROM {User.groups.through._meta.db_table} WHERE user_id = %s", user.pk)
    with client(caching_worker, path, cookie):
        assert subscribers(user_channel) == 1 and subscribers(group_channel) == 1  # as it was read before
        assert time.monotonic() - read < TTL, "too slow to reconnect within the cache's seconds"
    closed = time.monotonic()  # its last websocket closed: the entry is kept TTL seconds more
    wait_for(lambda: subscribers(user_channel) == 0, 5, "the websocket's departure")
    wait_for(lambda: time.monotonic() - closed > TTL + SECOND, 2 * TTL + 5, "the cache's seconds to pass")
    with client(caching_worker, path, cookie):
        assert subscribers(user_channel) == 0 and subscribers(group_channel) == 0  # what the database says now


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
def test_a_session_with_a_websocket_open_stays_kept_and_gets_the_seconds_again_when_it_closes(caching_worker):
    """A page change: the next page's websocket opens right after the last one closed, however long that one lived."""
    from django.contrib.sessions.models import Session

    fac = facility()
    user, cookie, key, user_channel, path = a_user_on(fac)
    with client(caching_worker, path, cookie):  # the first page: read, kept
        read = time.monotonic()
        raw_sql(f"DELETE FROM {Session._meta.db_table} WHERE session_key = %s", key)  # no signal
        wait_for(lambda: time.monotonic() - read > TTL + SECOND, 2 * TTL + 5, "the cache's seconds to pass")
        with client(caching_worker, path, cookie) as tab:  # another tab meanwhile: the open websocket keeps the entry
            RedisPublisher(facility=fac, users=[user.username]).publish_message("to the user", expire=0)
            assert recv(tab) == "to the user"
    wait_for(lambda: subscribers(user_channel) == 0, 5, "the websockets' departure")
    with client(caching_worker, path, cookie):  # the next page, right after the last close
        assert subscribers(user_channel) == 1
    closed = time.monotonic()
    wait_for(lambda: subscribers(user_channel) == 0, 5, "the websocket's departure")
    wait_for(lambda: time.monotonic() - closed > TTL + SECOND, 2 * TTL + 5, "the cache's seconds to pass")
    with client(caching_worker, path, cookie):
        assert subscribers(user_channel) == 0  # read again: the session is gone


def test_a_logout_is_not_undone_by_the_cache(worker):
    fac = facility()
    user, cookie, key, user_channel, path = a_user_on(fac)
    with client(worker, path, cookie) as ws:
        with client(worker, path, cookie):  # a reconnect while the first is open: from the cache
            assert subscribers(user_channel) == 1
        started = time.monotonic()
        logout(key, user)
        # The worker heard it: this websocket closes, and what it kept for the session went first.
        assert closed_with(ws, started)[0] == CloseCode.SESSION_ENDED
    wait_for(lambda: subscribers(user_channel) == 0, 5, "the websocket's departure")
    with client(worker, path, cookie):  # at once, well within the cache's seconds
        assert subscribers(user_channel) == 0  # anonymous, as the database says


def test_a_group_left_is_not_given_back_by_the_cache(worker):
    from django.contrib.auth.models import Group

    fac, watcher_fac, name = facility(), facility(), "g" + uuid.uuid4().hex[:8]
    user, watcher = new_user(name), new_user(name)
    cookie, _ = login(user)
    old_channel = channel_name("test", Audience.GROUP, fac, name)
    watched_channel = channel_name("test", Audience.GROUP, watcher_fac, name)
    path = f"/ws/{fac}?subscribe-group"
    with client(worker, f"/ws/{watcher_fac}?subscribe-group", login(watcher)[0]):
        with client(worker, path, cookie):
            assert subscribers(old_channel) == 1
        wait_for(lambda: subscribers(old_channel) == 0, 5, "the websocket's departure")
        # The user has no websocket now: only the command itself can tell the worker to forget.
        group = Group.objects.get(name=name)
        user.groups.remove(group)
        watcher.groups.remove(group)
        # Commands arrive in order: once the watcher's websocket left the group, the worker heard both.
        wait_for(lambda: subscribers(watched_channel) == 0, SECOND, "the watcher's websocket leaving the group")
        with client(worker, path, cookie):  # at once, well within the cache's seconds
            assert subscribers(old_channel) == 0
