"""Live authorization: a session that ends closes its websockets with 4001 within a second; group changes apply live.

The test process plays Django (views, the admin, a shell): it logs out,
deletes sessions, changes passwords and groups, and its signals reach the
real uWSGI worker over the real Redis. Each test runs with the site on
SQLite and on PostgreSQL (``site_server``). Users are made per test, so
that what one test does to its users never reaches another.
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import SITE_ENV, session_cookie
from tests.integration.helpers import RECV_TIMEOUT, SITE_ORIGIN, client, facility, recv
from tests.servers import TIMING, UwsgiServer, wait_for
from ws4redis_uwsgi.core.channels import Audience, channel_name
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.django.tokens import issue_token
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

#: What "within a second" allows on this machine (WS4REDIS_TIMING scales it on slow ones).
SECOND = 1.0 * TIMING


def new_user(*groups: str):
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user("u" + uuid.uuid4().hex[:10], password="old secret")
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


def login(user) -> tuple[str, str]:
    """A new session of ``user``: its Cookie header and its key."""
    cookie = session_cookie(user.username)
    return cookie, cookie.partition("=")[2]


def closed_with(ws: ClientConnection, started: float) -> tuple[int | None, float]:
    """Wait for the server to close ``ws``: its close code, and the seconds since ``started``."""
    try:
        while True:
            ws.recv(timeout=RECV_TIMEOUT)
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), time.monotonic() - started


def still_open(ws: ClientConnection, fac: str, user, *more: ClientConnection) -> None:
    """``ws`` (and ``more``), websockets of ``user`` on ``fac`` with subscribe-user, still get the user's messages."""
    marker = f"still there {uuid.uuid4().hex[:6]}"
    RedisPublisher(facility=fac, users=[user.username]).publish_message(marker, expire=0)
    assert [recv(w) for w in (ws, *more)] == [marker] * (1 + len(more))


def logout(session_key: str, user) -> None:
    """What ``django.contrib.auth.logout`` does for a request of that session, as a view would call it."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import logout as django_logout
    from django.test import RequestFactory

    request = RequestFactory().get("/logout/")
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    request.user = user
    django_logout(request)


def test_logout_closes_that_sessions_websockets_on_every_worker_and_no_other(site_server, another_worker):
    fac = facility()
    user = new_user()
    (cookie, key), (other_cookie, _) = login(user), login(user)
    path = f"/ws/{fac}?subscribe-user"
    second_worker = another_worker()
    with (
        client(site_server, path, cookie) as first_tab,
        client(second_worker, path, cookie) as second_tab,
        client(site_server, path, other_cookie) as other_device,
        client(site_server, f"/ws/{fac}?subscribe-broadcast") as bystander,
    ):
        started = time.monotonic()
        logout(key, user)
        for ws in (first_tab, second_tab):
            code, elapsed = closed_with(ws, started)
            assert code == CloseCode.SESSION_ENDED and elapsed < SECOND
        assert first_tab.close_reason == "session ended"
        still_open(other_device, fac, user)
        RedisPublisher(facility=fac, broadcast=True).publish_message("for everyone", expire=0)
        assert recv(bystander) == "for everyone"


def test_deleting_the_session_closes_its_websockets(site_server):
    from importlib import import_module

    from django.conf import settings

    fac = facility()
    user = new_user()
    cookie, key = login(user)
    with client(site_server, f"/ws/{fac}?subscribe-user", cookie) as ws:
        started = time.monotonic()
        import_module(settings.SESSION_ENGINE).SessionStore(key).delete()
        code, elapsed = closed_with(ws, started)
        assert code == CloseCode.SESSION_ENDED and elapsed < SECOND


def test_a_password_change_ends_the_other_sessions_and_keeps_the_one_that_changed_it(site_server):
    from django.conf import settings
    from django.test import Client

    fac = facility()
    user = new_user()
    (cookie, key), (other_cookie, _) = login(user), login(user)
    path = f"/ws/{fac}?subscribe-user&subscribe-session"
    with client(site_server, path, cookie) as changing, client(site_server, path, other_cookie) as other:
        browser = Client()
        browser.cookies[settings.SESSION_COOKIE_NAME] = key
        started = time.monotonic()
        response = browser.post(
            "/accounts/password_change/",
            {"old_password": "old secret", "new_password1": "n3w s3cret!x", "new_password2": "n3w s3cret!x"},
        )
        assert response.status_code == 302, response.content[:500]
        code, elapsed = closed_with(other, started)
        assert code == CloseCode.SESSION_ENDED and elapsed < SECOND
        # Django gave the changing session a new key (cycle_key): its websocket follows it,
        # session channel included, and nothing ends it on a later look at the user.
        new_key = browser.cookies[settings.SESSION_COOKIE_NAME].value
        assert new_key != key
        still_open(changing, fac, user)
        new_channel = channel_name("test", Audience.SESSION, fac, new_key)
        wait_for(lambda: subscribers(new_channel) == 1, SECOND, "the new session channel")
        RedisPublisher(facility=fac, sessions=[new_key]).publish_message("to the new session", expire=0)
        assert recv(changing) == "to the new session"


def test_a_user_made_inactive_or_deleted_loses_every_websocket(site_server):
    fac = facility()
    inactive, deleted = new_user(), new_user()
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(client(site_server, f"/ws/{fac}?subscribe-broadcast", login(who)[0]))
            for who in (inactive, inactive, deleted, deleted)
        ]
        started = time.monotonic()
        inactive.is_active = False
        inactive.save()
        deleted.delete()
        for ws in sockets:
            code, elapsed = closed_with(ws, started)
            assert code == CloseCode.SESSION_ENDED and elapsed < SECOND


def subscribers(channel: str) -> int:
    from ws4redis_uwsgi.bus.connection import get_client

    return int(dict(get_client().pubsub_numsub(channel)).get(channel.encode(), 0))


def test_group_changes_apply_without_reconnecting(site_server):
    from django.contrib.auth.models import Group

    fac = facility()
    old, new = "g" + uuid.uuid4().hex[:8], "g" + uuid.uuid4().hex[:8]
    user = new_user(old)
    old_channel, new_channel = (channel_name("test", Audience.GROUP, fac, g) for g in (old, new))
    with client(site_server, f"/ws/{fac}?subscribe-group&subscribe-user", login(user)[0]) as ws:
        assert subscribers(old_channel) == 1 and subscribers(new_channel) == 0
        started = time.monotonic()
        user.groups.add(Group.objects.create(name=new))
        wait_for(lambda: subscribers(new_channel) == 1, SECOND, "the new group's subscription")
        assert time.monotonic() - started < SECOND
        RedisPublisher(facility=fac, groups=[new]).publish_message("to the new group", expire=0)
        assert recv(ws) == "to the new group"
        user.groups.remove(Group.objects.get(name=old))
        wait_for(lambda: subscribers(old_channel) == 0, SECOND, "the old group's unsubscription")
        RedisPublisher(facility=fac, groups=[old]).publish_message("to the old group", expire=0)
        still_open(ws, fac, user)  # the next message it gets is this one: nothing came from the old group


def receives(ws: ClientConnection, text: str) -> bool:
    """Whether ``ws`` gets ``text`` within a tenth of a second."""
    try:
        return ws.recv(timeout=0.1 * TIMING) == text
    except TimeoutError:
        return False


def rename(group) -> None:
    group.name = "g" + uuid.uuid4().hex[:8]
    group.save()


#: Changes made from the group's side: its ``user_set``, or the group itself renamed or deleted (as in the admin).
GROUP_SIDE_CHANGES = {
    "user_set.add": lambda group, users: group.user_set.add(*users),
    "user_set.remove": lambda group, users: group.user_set.remove(*users),
    "user_set.clear": lambda group, users: group.user_set.clear(),
    "delete": lambda group, users: group.delete(),
    "rename": lambda group, users: rename(group),
}


@pytest.mark.parametrize("change", GROUP_SIDE_CHANGES)
def test_group_changes_from_the_groups_side_apply_without_reconnecting(site_server, change):
    """Django tells of these on the group (reverse m2m_changed, post_save and pre_delete of a group), not on each user.

    Two members, each with a websocket: a change of the group reaches every
    one of them, and they start or stop receiving its channel within a
    second; a renamed group's members move to the new name.
    """
    from django.contrib.auth.models import Group

    fac = facility()
    group = Group.objects.create(name="g" + uuid.uuid4().hex[:8])
    users = [new_user(), new_user()]
    joining = change == "user_set.add"
    if not joining:
        group.user_set.add(*users)
    old_name = group.name

    def channel(name: str) -> str:
        return channel_name("test", Audience.GROUP, fac, name)

    path = f"/ws/{fac}?subscribe-group&subscribe-user"
    with ExitStack() as stack:
        sockets = [stack.enter_context(client(site_server, path, login(u)[0])) for u in users]
        assert subscribers(channel(old_name)) == (0 if joining else 1)
        started = time.monotonic()
        GROUP_SIDE_CHANGES[change](group, users)
        left = None if joining else old_name
        joined = {"user_set.add": old_name, "rename": group.name}.get(change)
        if left is not None:
            # Redis counts the worker's subscription, which it drops when the last of its websockets has left.
            wait_for(lambda: subscribers(channel(left)) == 0, SECOND, f"the unsubscription from {left}")
            assert time.monotonic() - started < SECOND
            RedisPublisher(facility=fac, groups=[left]).publish_message("to the group they left", expire=0)
            for ws, user in zip(sockets, users, strict=True):
                still_open(ws, fac, user)  # the next message it gets is this one: nothing came from the old group
        if joined is not None:
            # Each member's websocket gets the group's messages, within the second.
            waiting = list(sockets)
            while waiting:
                RedisPublisher(facility=fac, groups=[joined]).publish_message("to the group", expire=0)
                waiting = [ws for ws in waiting if not receives(ws, "to the group")]
                assert not waiting or time.monotonic() - started < SECOND, f"{len(waiting)} member(s) not on {joined} in a second"


def test_a_token_websocket_closes_when_the_session_it_was_issued_from_logs_out(site_server):
    fac = facility()
    user = new_user()
    _, key = login(user)
    token = issue_token(user, session_key=key)
    with connect(
        f"{site_server.url}/ws/{fac}?subscribe-user", origin=SITE_ORIGIN, subprotocols=["ws4redis", f"ws4redis.token.{token}"]
    ) as ws:
        still_open(ws, fac, user)
        started = time.monotonic()
        logout(key, user)
        code, elapsed = closed_with(ws, started)
        assert code == CloseCode.SESSION_ENDED and elapsed < SECOND


@pytest.fixture
def another_worker(db_backend, tmp_path, request):
    """Starts a second uWSGI worker on the test's database and Redis: ``another_worker(**env)``."""
    with ExitStack() as stack:

        def start(**env: str) -> UwsgiServer:
            env = {**SITE_ENV, **env}
            if db_backend == "postgresql":
                env["WS4REDIS_TEST_DB"] = request.getfixturevalue("postgres_site_db")
            server = UwsgiServer(env, cores=100, log_path=tmp_path / f"uwsgi-{uuid.uuid4().hex[:6]}.log").start()
            stack.callback(server.stop)
            return server

        yield start


@pytest.fixture
def rechecking_server(another_worker):
    """A worker that looks at every logged-in websocket's session again each second."""
    return another_worker(WS4REDIS_TEST_SESSION_RECHECK="1")


def test_the_periodic_recheck_finds_what_django_sends_no_signal_for(rechecking_server):
    from django.contrib.auth.models import User
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    fac = facility()
    expired_user, deactivated, kept = new_user(), new_user(), new_user()
    expired_cookie, expired_key = login(expired_user)
    path = f"/ws/{fac}?subscribe-user"
    with (
        client(rechecking_server, path, expired_cookie) as expired,
        client(rechecking_server, path, login(deactivated)[0]) as raw_update,
        client(rechecking_server, f"{path}&token=token-{kept.username}") as site_scheme,
        client(rechecking_server, path, login(kept)[0]) as untouched,
    ):
        # Raw UPDATEs: no signal reaches the worker, its next look does.
        started = time.monotonic()
        Session.objects.filter(session_key=expired_key).update(expire_date=timezone.now())
        User.objects.filter(pk=deactivated.pk).update(is_active=False)
        for ws in (expired, raw_update):
            code, elapsed = closed_with(ws, started)
            assert code == CloseCode.SESSION_ENDED and elapsed < 2.5 * SECOND  # a look each second, and the batch delay
        # Looked at several times meanwhile, valid websockets stay, the site's own scheme included.
        still_open(untouched, fac, kept, site_scheme)
        User.objects.filter(pk=kept.pk).update(is_active=False)
        for ws in (untouched, site_scheme):
            assert closed_with(ws, started)[0] == CloseCode.SESSION_ENDED


@pytest.mark.slow  # long: in make test-slow (and CI), not in make test
def test_a_storm_of_group_changes_does_not_stall_the_worker(site_server):
    """2,000 group changes a second for users with websockets: the worker's other clients are served meanwhile.

    The storm is what Django's signals send (:func:`live_auth.publish` of ``groups``
    commands) at a rate no single test process reaches through the ORM; real
    membership changes go on meanwhile, and each websocket ends up with them.
    """
    from django.contrib.auth.models import Group

    from ws4redis_uwsgi.bus import live_auth
    from ws4redis_uwsgi.core.control import Command, Verb

    fac = facility()
    group = Group.objects.create(name="g" + uuid.uuid4().hex[:8])
    users = [new_user() for _ in range(20)]
    delays: list[float] = []
    failures: list[Exception] = []
    commands = [Command(Verb.GROUPS, str(user.pk)) for user in users]
    with ExitStack() as stack:
        members = [stack.enter_context(client(site_server, f"/ws/{fac}?subscribe-group", login(u)[0])) for u in users]
        bystander = stack.enter_context(client(site_server, f"/ws/{fac}?subscribe-broadcast"))
        done = threading.Event()

        def storm() -> None:
            while not done.is_set():
                live_auth.publish(commands)  # 20 commands every 10 ms
                time.sleep(0.01)

        def probe() -> None:
            try:
                publisher = RedisPublisher(facility=fac, broadcast=True)
                while not done.is_set():
                    sent = time.monotonic()
                    publisher.publish_message("probe", expire=0)
                    answer = bystander.recv(timeout=RECV_TIMEOUT)
                    delays.append(time.monotonic() - sent if answer == "probe" else float("inf"))
                    time.sleep(0.02)
            except Exception as exc:  # the assertions below report it
                failures.append(exc)

        threads = [threading.Thread(target=storm), threading.Thread(target=probe)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)  # the storm is on
            for user in users:
                user.groups.add(group)
            time.sleep(1.0)
        finally:
            done.set()
            for thread in threads:
                thread.join()
        # Every member follows its real change, storm or not.
        wait_for(lambda: subscribers(channel_name("test", Audience.GROUP, fac, group.name)) == 1, 5, "the group's subscription")
        # The last ones within a second of their change: a message to the group reaches every member.
        waiting, deadline = list(members), time.monotonic() + SECOND
        while waiting and time.monotonic() < deadline:
            RedisPublisher(facility=fac, groups=[group.name]).publish_message("to the group", expire=0)
            waiting = [ws for ws in waiting if not receives(ws, "to the group")]
        assert not waiting, f"{len(waiting)} of {len(members)} members not subscribed to their new group"
    print(f"the probe waited at most {max(delays, default=0) * 1000:.1f} ms during the storm")
    assert not failures, f"the probe failed: {failures[0]!r}"
    assert len(delays) > 20, f"the probe got {len(delays)} answers"
    assert max(delays) < 0.25 * TIMING, f"a message waited {max(delays):.3f}s during the storm"


ENGINES = ["django.contrib.sessions.backends.cache", "django.contrib.sessions.backends.cached_db"]
ALL_ENGINES = [*ENGINES, "django.contrib.sessions.backends.signed_cookies"]


def short(engine: str) -> str:
    return engine.rpartition(".")[2]


@pytest.fixture
def on_engine(site_db, redis_server, tmp_path):
    """``on_engine(name)``: the test process and a worker (looking again each second) on that session engine."""
    from django.test import override_settings

    with ExitStack() as stack:

        def start(name: str) -> UwsgiServer:
            stack.enter_context(override_settings(SESSION_ENGINE=name))
            env = {**SITE_ENV, "WS4REDIS_TEST_SESSION_ENGINE": name, "WS4REDIS_TEST_SESSION_RECHECK": "1"}
            server = UwsgiServer(env, cores=100, log_path=tmp_path / "uwsgi.log").start()
            stack.callback(server.stop)
            return server

        yield start


@pytest.mark.parametrize("name", ALL_ENGINES, ids=short)
def test_every_session_engine_ends_the_websockets_of_a_logout(on_engine, name):
    server = on_engine(name)
    fac = facility()
    user, someone_else = new_user(), new_user()
    cookie, key = login(user)
    path = f"/ws/{fac}?subscribe-user"
    # (Two signed-cookie sessions of one user made within a second are the same cookie: another user's stays.)
    with client(server, path, cookie) as ws, client(server, path, login(someone_else)[0]) as other:
        still_open(ws, fac, user)
        started = time.monotonic()
        logout(key, user)
        code, elapsed = closed_with(ws, started)
        assert code == CloseCode.SESSION_ENDED and elapsed < SECOND
        still_open(other, fac, someone_else)


@pytest.mark.parametrize("name", ENGINES, ids=short)
def test_a_deleted_session_ends_its_websockets_at_once_or_at_the_next_look(on_engine, name):
    """cached_db's delete sends a signal (at once); the cache engine's does not (the worker's look each second)."""
    from importlib import import_module

    server = on_engine(name)
    fac = facility()
    user = new_user()
    cookie, key = login(user)
    with client(server, f"/ws/{fac}?subscribe-user", cookie) as ws:
        started = time.monotonic()
        import_module(name).SessionStore(key).delete()
        code, elapsed = closed_with(ws, started)
        assert code == CloseCode.SESSION_ENDED
        assert elapsed < (SECOND if name.endswith("cached_db") else 2.5 * SECOND)


def test_the_workers_look_at_a_session_changes_nothing(site_db):
    """Django's get_user flushes a session whose hash fails and re-keys one that needs a fallback key: the look must not."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import HASH_SESSION_KEY
    from django.test import override_settings

    from ws4redis_uwsgi.server.authority import session_user_and_groups

    def session_user(session: object) -> object:
        return session_user_and_groups(session, with_groups=False)[0]

    engine = import_module(settings.SESSION_ENGINE)
    user = new_user()
    _, key = login(user)
    assert session_user(engine.SessionStore(key)) == user
    with override_settings(SECRET_KEY="rotated " * 8, SECRET_KEY_FALLBACKS=[settings.SECRET_KEY]):
        assert session_user(engine.SessionStore(key)) == user  # verified by the fallback
    store = engine.SessionStore(key)
    store[HASH_SESSION_KEY] = "not the hash"
    store.save()
    assert session_user(engine.SessionStore(key)) is None
    assert engine.SessionStore().exists(key)  # not flushed, not re-keyed
    assert session_user(engine.SessionStore("no-such-session")) is None
