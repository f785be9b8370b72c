"""A page's identity claim with a real worker: the page's websocket opens without the database, never against Django's word.

The pages are served in this process by Django's test client through the
test site's middleware (the site's pages vassal); the websockets go to a
real uWSGI worker. That a handshake read nothing shows from outside: the
session row is deleted by raw SQL (no signal) before it, and the
websocket still subscribes the user's channel. After a logout, a group
change or a worker's start, the claim is refused and the database decides.
Each test runs with the site on SQLite and on PostgreSQL, and with a worker
of the test site (its hooks read the session on a database greenlet) and one
of the stock set-up, whose handshakes on a claim skip the database greenlets
and open no database connection at all.
"""

from __future__ import annotations

import time
import uuid

import psutil
import pytest

from tests.integration.helpers import client, facility, recv
from tests.integration.test_live_auth import SECOND, another_worker, closed_with, logout, new_user, subscribers
from tests.integration.test_live_auth_identity_cache import raw_sql, stock, worker
from tests.servers import wait_for
from ws4redis_uwsgi.core.channels import Audience, channel_name
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.django.identity_claim import CLOCK_MARGIN, COOKIE_NAME
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

__all__ = ["another_worker", "worker"]  # fixtures of the live authorization tests, used here

_hearing: dict[int, float] = {}


def database_connections(server) -> int:
    """The worker's database connections: its descriptors of the SQLite file, or its TCP connections to PostgreSQL."""
    from django.db import connection

    (pid,) = server.worker_pids()
    worker = psutil.Process(pid)
    where = connection.settings_dict
    if where["ENGINE"].endswith("sqlite3"):
        return sum(1 for f in worker.open_files() if f.path == str(where["NAME"]))
    return sum(1 for c in worker.net_connections("tcp") if c.raddr and c.raddr.port == int(where["PORT"]))


def hearing(server) -> None:
    """Wait until ``server``'s worker has heard live authorization for longer than the clocks' margin.

    A claim counts as made that margin before its time, and only claims made
    after the worker started hearing are taken: the first websocket shows the
    worker subscribed (the control channel first).
    """
    if server.port not in _hearing:
        with client(server, f"/ws/{facility()}?subscribe-broadcast"):
            _hearing[server.port] = time.time()
    since = _hearing[server.port]
    wait_for(lambda: time.time() > since + CLOCK_MARGIN + 0.2, 2 * CLOCK_MARGIN + 1, "the clocks' margin to pass")


def page(user) -> tuple[str, str, str]:
    """``user`` logs in and loads a page: the Cookie header with the session and the claim, the one without, the session key."""
    from django.conf import settings
    from django.test import Client

    browser = Client()
    browser.force_login(user)
    response = browser.get("/page/")
    assert response.status_code == 200 and COOKIE_NAME in response.cookies
    key = browser.cookies[settings.SESSION_COOKIE_NAME].value
    session = f"{settings.SESSION_COOKIE_NAME}={key}"
    return f"{session}; {COOKIE_NAME}={browser.cookies[COOKIE_NAME].value}", session, key


def delete_session_row(key: str) -> None:
    """The session goes without a signal: only a handshake that reads the database can tell."""
    from django.contrib.sessions.models import Session

    raw_sql(f"DELETE FROM {Session._meta.db_table} WHERE session_key = %s", key)


def test_the_pages_websocket_opens_on_its_claim_with_the_users_and_groups_channels(worker):
    fac, group = facility(), "g" + uuid.uuid4().hex[:8]
    user = new_user(group)
    user_channel = channel_name("test", Audience.USER, fac, user.username)
    group_channel = channel_name("test", Audience.GROUP, fac, group)
    hearing(worker)
    with_claim, without, key = page(user)
    delete_session_row(key)
    with client(worker, f"/ws/{fac}?subscribe-user&subscribe-group", with_claim) as ws:
        assert subscribers(user_channel) == 1 and subscribers(group_channel) == 1
        if stock(worker):
            assert database_connections(worker) == 0  # nothing was read, on no greenlet
        RedisPublisher(facility=fac, users=[user.username]).publish_message("to the user", expire=0)
        RedisPublisher(facility=fac, groups=[group]).publish_message("to the group", expire=0)
        assert recv(ws) == "to the user" and recv(ws) == "to the group"
        with client(worker, f"/ws/{fac}?subscribe-user", without) as anonymous:  # the cookie alone: read, gone
            RedisPublisher(facility=fac, users=[user.username]).publish_message("again", expire=0)
            assert recv(ws) == "again"
            with pytest.raises(TimeoutError):
                anonymous.recv(timeout=0.5 * SECOND)
            if stock(worker):
                assert database_connections(worker) == 1  # that one read, on a database greenlet


def test_a_claim_does_not_outlive_a_logout(worker):
    fac = facility()
    user = new_user()
    user_channel = channel_name("test", Audience.USER, fac, user.username)
    path = f"/ws/{fac}?subscribe-user"
    hearing(worker)
    with_claim, _, key = page(user)
    with client(worker, path, with_claim) as ws:
        assert subscribers(user_channel) == 1
        started = time.monotonic()
        logout(key, user)
        assert closed_with(ws, started)[0] == CloseCode.SESSION_ENDED  # the worker heard it
    wait_for(lambda: subscribers(user_channel) == 0, 5 * SECOND, "the websocket's departure")
    with client(worker, path, with_claim):  # the same cookies, the claim well within its seconds
        assert subscribers(user_channel) == 0  # anonymous, as the database says


def test_a_claim_made_before_a_group_change_does_not_give_the_group_back(worker):
    from django.contrib.auth.models import Group

    fac, watcher_fac, name = facility(), facility(), "g" + uuid.uuid4().hex[:8]
    user, watcher = new_user(name), new_user(name)
    old_channel = channel_name("test", Audience.GROUP, fac, name)
    watched_channel = channel_name("test", Audience.GROUP, watcher_fac, name)
    hearing(worker)
    with_claim, _, _ = page(user)
    with client(worker, f"/ws/{watcher_fac}?subscribe-group", page(watcher)[0]):
        assert subscribers(watched_channel) == 1
        group = Group.objects.get(name=name)
        user.groups.remove(group)
        watcher.groups.remove(group)
        # Commands arrive in order: once the watcher's websocket left the group, the worker heard both.
        wait_for(lambda: subscribers(watched_channel) == 0, 5 * SECOND, "the watcher's websocket leaving the group")
        with client(worker, f"/ws/{fac}?subscribe-group", with_claim):
            assert subscribers(old_channel) == 0  # read again: the user left the group


@pytest.mark.parametrize("env", [{}, {"WS4REDIS_TEST_STOCK": "1"}], ids=["site hooks", "stock"])
def test_a_worker_takes_no_claim_made_before_it_started(another_worker, env):
    fac = facility()
    user = new_user()
    user_channel = channel_name("test", Audience.USER, fac, user.username)
    with_claim, _, key = page(user)
    worker = another_worker(**env)
    hearing(worker)
    delete_session_row(key)
    with client(worker, f"/ws/{fac}?subscribe-user", with_claim):
        assert subscribers(user_channel) == 0  # the worker may have missed a logout: it read the database
    fresh, _, fresh_key = page(user)
    delete_session_row(fresh_key)
    with client(worker, f"/ws/{fac}?subscribe-user", fresh):
        assert subscribers(user_channel) == 1
