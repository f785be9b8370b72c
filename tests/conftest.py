"""Fixtures: a real redis-server, the test site's database, a real uWSGI worker, logged-in users.

The Redis port and database file are chosen here, before Django is set up,
and handed to uWSGI through the environment, so the test process (which
publishes and creates sessions) and the websocket worker share both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def site_db() -> None:
    """Migrate the shared SQLite database and create john, mary and their groups."""
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    cooks, staff = Group.objects.get_or_create(name="cooks")[0], Group.objects.get_or_create(name="staff")[0]
    john = User.objects.create_user("john", password="secret")
    john.groups.add(cooks)
    mary = User.objects.create_user("mary", password="secret", is_staff=True)
    mary.groups.add(cooks, staff)


@pytest.fixture(scope="session")
def uwsgi_server(redis_server: RedisServer, site_db: None) -> Iterator[UwsgiServer]:
    server = UwsgiServer(SITE_ENV, log_path=_WORKDIR / "uwsgi.log").start()
    yield server
    server.stop()


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
