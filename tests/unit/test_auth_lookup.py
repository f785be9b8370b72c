"""The compiled session, user and group lookups give what Django's own get_user and ORM give.

Each case builds a real session in the test site's database, then loads it
twice: once as Django's middleware would (SessionStore + auth.get_user) and
once through ws4redis_uwsgi.django.identity, and compares the two. Every case runs on
SQLite and on PostgreSQL (``db_backend``): the compiled SQL is each backend's.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.db.backends.sqlite3.base import SQLiteCursorWrapper
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ws4redis_uwsgi import process
from ws4redis_uwsgi.django import auth_lookup
from ws4redis_uwsgi.django.identity import identity_from_request, load_session_and_user


class Request:
    def __init__(self, session_key: str | None) -> None:
        self.COOKIES = {settings.SESSION_COOKIE_NAME: session_key} if session_key else {}


def login_session(user: User, backend: str = auth_lookup.MODEL_BACKEND, **extra: Any) -> str:
    store = SessionStore()
    store[auth.SESSION_KEY] = str(user.pk)
    store[auth.BACKEND_SESSION_KEY] = backend
    store[auth.HASH_SESSION_KEY] = user.get_session_auth_hash()
    for key, value in extra.items():
        store[key] = value
    store.save()
    return store.session_key  # type: ignore[return-value]


def with_django(session_key: str | None) -> Request:
    request = Request(session_key)
    request.session = SessionStore(session_key)  # type: ignore[attr-defined]
    request.user = auth.get_user(request)  # type: ignore[attr-defined]
    return request


def refuse(*args: Any) -> None:
    raise AssertionError("the ORM path was taken")


def with_lookup(session_key: str | None, compiled: bool = True) -> Request:
    """``load_session_and_user``; with ``compiled``, Django's own session load and get_user must not run."""
    request = Request(session_key)
    with contextlib.ExitStack() as stack:
        if compiled:
            stack.enter_context(mock.patch.object(auth_lookup.auth, "get_user", refuse))
            stack.enter_context(mock.patch.object(SessionStore, "load", refuse))
        load_session_and_user(request)
    return request


def fields(user: Any) -> dict[str, Any]:
    return {f.attname: getattr(user, f.attname) for f in user._meta.concrete_fields} if user.is_authenticated else {}


def same(session_key: str | None, compiled: bool = True) -> tuple[Request, Request]:
    """Load the session with the compiled lookups first, then with Django: both must agree."""
    ours = with_lookup(session_key, compiled)
    django = with_django(session_key)
    assert type(ours.user) is type(django.user)  # type: ignore[attr-defined]
    assert fields(ours.user) == fields(django.user)  # type: ignore[attr-defined]
    assert ours.session.session_key == django.session.session_key  # type: ignore[attr-defined]
    assert dict(ours.session.items()) == dict(django.session.items())  # type: ignore[attr-defined]
    return ours, django


@pytest.fixture
def user(db_backend: str) -> User:
    user = User.objects.create_user(f"lookup-{User.objects.count()}", password="secret", first_name="Zoë")
    user.groups.add(*Group.objects.filter(name__in=["staff", "cooks"]))
    return user


def test_logged_in_user_is_read_with_two_queries_and_matches_the_orm(user: User) -> None:
    key = login_session(user, extra_value=[1, "two"])
    with CaptureQueriesContext(connection) as queries:
        ours = with_lookup(key)
        assert ours.user.pk == user.pk  # type: ignore[attr-defined]
    assert len(queries) == 2  # the session row, the user row with its groups
    assert ours.user.date_joined == user.date_joined and timezone.is_aware(ours.user.date_joined)  # type: ignore[attr-defined]
    assert ours.user._state.db == "default" and not ours.user._state.adding  # type: ignore[attr-defined]
    assert ours.session["extra_value"] == [1, "two"]  # type: ignore[attr-defined]
    assert fields(ours.user) == fields(User.objects.get(pk=user.pk))  # type: ignore[attr-defined]


def test_a_sites_execute_wrappers_see_the_lookups(user: User) -> None:
    """Without DEBUG the lookups skip Django's cursor wrapper; a site that installed an execute wrapper still sees them."""
    key = login_session(user)
    assert not connection.queries_logged
    seen: list[str] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        request = with_lookup(key)
        identity_from_request(request)
    assert len(seen) == 2 and request.user.pk == user.pk  # type: ignore[attr-defined]
    seen.clear()
    assert same(key)[0].user.pk == user.pk and seen == []  # nobody watching: the backend's cursor


def test_sqlite_takes_the_query_converted_once_and_postgresql_as_compiled(user: User, monkeypatch) -> None:
    """Django's SQLite cursor rewrites ``%s`` into ``?`` on every execute; the compiled queries do it once."""
    key = login_session(user)
    expected = fields(User.objects.get(pk=user.pk))
    process.forget(auth_lookup._QUERIES)  # compiled afresh: what this test sees is what a new worker does
    converted: list[str] = []
    if connection.vendor == "sqlite":
        original = SQLiteCursorWrapper.convert_query
        monkeypatch.setattr(
            SQLiteCursorWrapper, "convert_query", lambda self, query, **kw: converted.append(query) or original(self, query, **kw)
        )
    for _ in range(3):
        ours = with_lookup(key)
        assert fields(ours.user) == expected  # type: ignore[attr-defined]
    queries = [q for q in process.existing(auth_lookup._QUERIES).values() if q is not None]
    by_driver = [q.query if isinstance(q, auth_lookup.UserWithGroups) else q for q in queries]
    direct = [q.driver_sql[1] for q in by_driver if q.driver_sql is not None]
    assert len(direct) == 2  # the session's query and the user's
    if connection.vendor == "sqlite":
        assert len(converted) == 2  # once per query, not per handshake
        assert all(sql.count("?") == 1 and "%s" not in sql for _, sql in direct)
    else:
        assert direct == [None, None]  # psycopg takes %s as it is


def test_a_sqlite_cursor_that_changes_execute_keeps_it(site_db: None, monkeypatch) -> None:
    assert connection.vendor == "sqlite"
    user = User.objects.create_user(f"lookup-{User.objects.count()}", password="secret")
    calls: list[str] = []

    class Instrumented(SQLiteCursorWrapper):
        def execute(self, query: str, params: Any = None) -> Any:
            calls.append(query)
            return super().execute(query, params)

    key = login_session(user)
    process.forget(auth_lookup._QUERIES)
    monkeypatch.setattr(connection, "create_cursor", lambda name=None: connection.connection.cursor(factory=Instrumented))
    assert same(key)[0].user.pk == user.pk  # type: ignore[attr-defined]
    assert len(calls) >= 2 and all("%s" in query for query in calls[:2])  # our two lookups, through its execute


def test_groups_come_in_the_users_query(user: User) -> None:
    request = with_lookup(login_session(user))
    with CaptureQueriesContext(connection) as queries:
        assert identity_from_request(request, with_groups=False).groups == ()
        identity = identity_from_request(request)
    assert len(queries) == 0
    assert identity.groups == ("cooks", "staff") == tuple(sorted(user.groups.values_list("name", flat=True)))
    assert identity.username == user.username and identity.session_key == request.session.session_key  # type: ignore[attr-defined]


def test_a_user_in_no_group_is_read_whole_by_the_joined_query(user: User) -> None:
    user.groups.clear()
    ours, _ = same(login_session(user))
    with CaptureQueriesContext(connection) as queries:
        assert identity_from_request(ours).groups == ()
    assert len(queries) == 0


def test_a_hook_that_gives_the_request_another_user_gets_that_users_groups(user: User) -> None:
    request = with_lookup(login_session(user))
    request.user = User.objects.create_user(f"other-{User.objects.count()}")  # type: ignore[attr-defined]
    request.user.groups.add(Group.objects.get(name="staff"))  # type: ignore[attr-defined]
    assert identity_from_request(request).groups == ("staff",)


class Router:
    """A database router that sends nothing anywhere: any router may send the groups elsewhere."""


@override_settings(DATABASE_ROUTERS=["tests.unit.test_auth_lookup.Router"])
def test_with_a_database_router_groups_have_a_query_of_their_own(user: User) -> None:
    request, _ = same(login_session(user))
    with CaptureQueriesContext(connection) as queries:
        assert identity_from_request(request, with_groups=False).groups == ()
    assert len(queries) == 0
    with CaptureQueriesContext(connection) as queries:
        assert identity_from_request(request).groups == ("cooks", "staff")
    assert len(queries) == 1


def test_unknown_missing_and_malformed_keys_are_anonymous(db_backend: str) -> None:
    for key in ("x" * 32, "short", None):
        ours = with_lookup(key)
        assert not ours.user.is_authenticated and ours.session.session_key is None  # type: ignore[attr-defined]


def test_expired_session_is_anonymous_like_django(user: User) -> None:
    key = login_session(user)
    SessionStore.get_model_class().objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(seconds=1))
    ours, _ = same(key)
    assert not ours.user.is_authenticated and ours.session.session_key is None  # type: ignore[attr-defined]


def test_session_of_an_anonymous_visitor_keeps_its_data(db_backend: str) -> None:
    store = SessionStore()
    store["cart"] = 3
    store.save()
    ours, _ = same(store.session_key)
    assert not ours.user.is_authenticated and ours.session["cart"] == 3  # type: ignore[attr-defined]


def test_inactive_and_deleted_users_are_anonymous(user: User) -> None:
    key = login_session(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    ours, _ = same(key)
    assert not ours.user.is_authenticated  # type: ignore[attr-defined]
    key = login_session(user)
    User.objects.filter(pk=user.pk).delete()
    ours, _ = same(key)
    assert not ours.user.is_authenticated  # type: ignore[attr-defined]


def test_changed_password_logs_out_and_flushes_the_session_as_django_does(user: User) -> None:
    key = login_session(user)
    user.set_password("changed")
    user.save()
    ours = with_lookup(key, compiled=False)
    assert not ours.user.is_authenticated  # type: ignore[attr-defined]
    # Django's get_user flushed it: the row is gone.
    assert not SessionStore.get_model_class().objects.filter(session_key=key).exists()


@override_settings(SECRET_KEY="rotated-secret", SECRET_KEY_FALLBACKS=["tests-only-not-secret"])
def test_session_signed_with_a_fallback_secret_is_left_to_django(user: User) -> None:
    with override_settings(SECRET_KEY="tests-only-not-secret", SECRET_KEY_FALLBACKS=[]):
        key = login_session(user)
    ours = with_lookup(key, compiled=False)
    assert ours.user.pk == user.pk  # type: ignore[attr-defined]


@override_settings(AUTHENTICATION_BACKENDS=[auth_lookup.MODEL_BACKEND, "django.contrib.auth.backends.AllowAllUsersModelBackend"])
def test_other_backends_go_through_django(user: User) -> None:
    key = login_session(user, backend="django.contrib.auth.backends.AllowAllUsersModelBackend")
    User.objects.filter(pk=user.pk).update(is_active=False)
    ours, _ = same(key, compiled=False)
    assert ours.user.pk == user.pk  # type: ignore[attr-defined]  # that backend lets inactive users in


def test_backend_no_longer_configured_is_anonymous(user: User) -> None:
    key = login_session(user, backend="some.removed.Backend")
    ours, _ = same(key, compiled=False)
    assert not ours.user.is_authenticated  # type: ignore[attr-defined]


@override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies")
def test_other_session_engines_load_as_django_loads_them(user: User) -> None:
    from django.contrib.sessions.backends.signed_cookies import SessionStore as CookieStore

    store = CookieStore()
    store[auth.SESSION_KEY] = str(user.pk)
    store[auth.BACKEND_SESSION_KEY] = auth_lookup.MODEL_BACKEND
    store[auth.HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    ours = with_lookup(store.session_key, compiled=False)
    assert ours.user.pk == user.pk  # type: ignore[attr-defined]


def test_the_stock_queries_compile(db_backend: str) -> None:
    """The session, user and groups queries of the default set-up all take the compiled path."""
    for factory in (auth_lookup._session_query, auth_lookup._user_query, auth_lookup._groups_query):
        query = factory("default")
        assert query.sql.count("%s") == len(query.params)
    joined = auth_lookup.UserWithGroups("default").query
    assert joined.sql.count("%s") == len(joined.params) and "JOIN" in joined.sql


def test_a_query_that_cannot_be_compiled_is_tried_once_then_the_orm_answers(user, monkeypatch, caplog) -> None:
    calls = []

    def broken(alias: str) -> None:
        calls.append(alias)
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(auth_lookup, "_user_query", broken)
    key = login_session(user)
    for _ in range(3):
        ours, _ = same(key, compiled=False)
        assert ours.user.pk == user.pk  # type: ignore[attr-defined]
    assert calls == ["default"]
    assert caplog.text.count("could not compile") == 1


def test_compiled_queries_follow_the_user_model_and_settings_changes(db_backend: str) -> None:
    first = auth_lookup._compiled(auth_lookup._user_query, "default")
    assert auth_lookup._compiled(auth_lookup._user_query, "default") is first
    with override_settings(DEBUG=False):  # any setting_changed: compile again
        assert auth_lookup._compiled(auth_lookup._user_query, "default") is not first


def looked_at_again(session_key: str) -> Any:
    """What a worker's periodic re-check reads for a session (it must change nothing, so it is not auth.get_user)."""
    from ws4redis_uwsgi.server.authority import session_user_and_groups

    return session_user_and_groups(SessionStore(session_key), with_groups=False)[0]


def test_the_recheck_reads_the_user_by_the_compiled_query_as_model_backend_would(user: User) -> None:
    """Each logged-in websocket is looked at again every WS4REDIS_SESSION_RECHECK: by the ORM, dearer than its handshake."""
    from django.contrib.auth.backends import ModelBackend

    key = login_session(user)
    with mock.patch.object(ModelBackend, "get_user", refuse):
        assert fields(looked_at_again(key)) == fields(User.objects.get(pk=user.pk))
        User.objects.filter(pk=user.pk).update(is_active=False)
        assert looked_at_again(key) is None
        User.objects.filter(pk=user.pk).delete()
        assert looked_at_again(key) is None


@override_settings(AUTHENTICATION_BACKENDS=[auth_lookup.MODEL_BACKEND, "django.contrib.auth.backends.AllowAllUsersModelBackend"])
def test_the_recheck_asks_other_backends_themselves(user: User) -> None:
    key = login_session(user, backend="django.contrib.auth.backends.AllowAllUsersModelBackend")
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert looked_at_again(key).pk == user.pk  # that backend lets inactive users in
