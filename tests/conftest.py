"""Fixtures: a real redis-server, the test site's database, a real uWSGI worker, logged-in users.

The Redis port and database file are chosen here, before Django is set up,
and handed to uWSGI through the environment, so the test process (which
publishes and creates sessions) and the websocket worker share both.

The site's database is SQLite. Tests that take ``db_backend`` run twice,
``[sqlite]`` and ``[postgresql]``: for the second a private PostgreSQL server
(tests/postgres.py) holds the same users and groups, the test process's
``default`` database is that one while the test runs, and ``site_server`` is
a uWSGI worker whose site reads it too. Without PostgreSQL installed the
``[postgresql]`` runs are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import postgres
from tests.servers import RedisServer, UwsgiServer, free_port

_WORKDIR = Path(tempfile.mkdtemp(prefix="ws4redis-tests-"))
_REDIS_PORT = free_port()
SITE_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.testsite.settings",
    "WS4REDIS_TEST_DB": str(_WORKDIR / "site.sqlite3"),
    "WS4REDIS_TEST_REDIS": f"redis://127.0.0.1:{_REDIS_PORT}/0",
}
os.environ.update(SITE_ENV)

import django  # noqa: E402

django.setup()

# The kit users get (ws4redis_uwsgi.testing), enabled as docs/testing.md says; its own tests use it.
pytest_plugins = ["ws4redis_uwsgi.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    """Each test starts without the package's per-process resources (hub, clients, workers) of the one before."""
    yield
    from ws4redis_uwsgi import process

    process.reset()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(_REDIS_PORT, _WORKDIR).start()
    yield server
    server.stop()


def populate_site() -> None:
    """Migrate the default database and create john, mary and their groups."""
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    cooks, staff = Group.objects.get_or_create(name="cooks")[0], Group.objects.get_or_create(name="staff")[0]
    john = User.objects.create_user("john", password="secret")
    john.groups.add(cooks)
    mary = User.objects.create_user("mary", password="secret", is_staff=True)
    mary.groups.add(cooks, staff)


@pytest.fixture(scope="session")
def site_db() -> None:
    """Migrate the shared SQLite database and create john, mary and their groups."""
    populate_site()


@contextlib.contextmanager
def default_database(where: str) -> Iterator[None]:
    """Make ``where`` (WS4REDIS_TEST_DB's format) this process's ``default`` database for a while.

    Django's connection handler reads ``settings.DATABASES`` (the very dict it
    holds) when it makes a thread's connection, so closing and dropping this
    thread's connection and replacing the entry is enough. What is cached per
    alias goes with it: ContentType ids and the package's compiled queries.
    """
    from django.conf import settings
    from django.contrib.contenttypes.models import ContentType
    from django.db import connections

    from tests.testsite.settings import site_database
    from ws4redis_uwsgi import process

    def use(entry: dict) -> None:
        connections["default"].close()
        del connections["default"]
        settings.DATABASES["default"] = entry
        ContentType.objects.clear_cache()
        process.reset()

    assert connections.settings is settings.DATABASES
    original = settings.DATABASES["default"]
    use(connections.configure_settings({"default": site_database(where)})["default"])
    try:
        yield
    finally:
        use(original)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    reason = postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = postgres.PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_site_db(postgres_server: postgres.PostgresServer) -> str:
    """The site's database on PostgreSQL, migrated, with the users and groups of ``site_db``: its URL."""
    with default_database(postgres_server.url):
        populate_site()
    return postgres_server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test on each database the site may have (Django's vendor names); it is the default meanwhile."""
    from django.db import connection

    if request.param == "sqlite":
        request.getfixturevalue("site_db")
        assert connection.vendor == "sqlite"
        yield "sqlite"
        return
    with default_database(request.getfixturevalue("postgres_site_db")):
        assert connection.vendor == "postgresql"
        yield "postgresql"


@pytest.fixture(scope="session")
def uwsgi_server(redis_server: RedisServer, site_db: None) -> Iterator[UwsgiServer]:
    server = UwsgiServer(SITE_ENV, log_path=_WORKDIR / "uwsgi.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def uwsgi_server_postgres(redis_server: RedisServer, postgres_site_db: str) -> Iterator[UwsgiServer]:
    """The worker of ``uwsgi_server``, its site on the PostgreSQL database."""
    env = {**SITE_ENV, "WS4REDIS_TEST_DB": postgres_site_db}
    server = UwsgiServer(env, log_path=_WORKDIR / "uwsgi-postgresql.log").start()
    yield server
    server.stop()


@pytest.fixture
def site_server(db_backend: str, request: pytest.FixtureRequest) -> UwsgiServer:
    """The uWSGI worker whose site uses the test's database (``db_backend``)."""
    return request.getfixturevalue("uwsgi_server" if db_backend == "sqlite" else "uwsgi_server_postgres")


@pytest.fixture
def redis_client(redis_server: RedisServer):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def session_cookie(username: str | None) -> str:
    """A ``Cookie`` header value with a real session for ``username`` (anonymous: an empty session)."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    if username is None:
        from django.contrib.sessions.backends.db import SessionStore

        store = SessionStore()
        store["visited"] = True
        store.save()
        return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"
    client.force_login(User.objects.get(username=username))
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@pytest.fixture
def login(site_db: None):
    return session_cookie


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port, which the test may kill and start again."""
    server = RedisServer(workdir=tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def private_stack(site_db, tmp_path):
    """A redis-server and uWSGI worker of this test's own, so they can be broken; publishers use that Redis."""
    from django.test import override_settings

    redis_server = RedisServer(workdir=tmp_path).start()
    env = {**SITE_ENV, "WS4REDIS_TEST_REDIS": redis_server.url}
    server = UwsgiServer(env, cores=100, log_path=tmp_path / "uwsgi.log").start()
    with override_settings(WS4REDIS_CONNECTION=redis_server.url):
        yield redis_server, server
    server.stop()
    redis_server.stop()
