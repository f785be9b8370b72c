"""pytest fixtures of ws4redis_uwsgi.testing; enable them in the project's root ``conftest.py``::

    pytest_plugins = ["ws4redis_uwsgi.testing.pytest_plugin"]

It is not registered as an automatic (``pytest11``) plugin: the package is
installed on servers and in projects that never test with it, and fixtures
that start processes should be asked for. Its fixtures are prefixed
``ws4redis_`` so that they meet no other plugin's (pytest-django's
``live_server``).

* ``ws4redis_published``: :func:`~ws4redis_uwsgi.testing.capture_publishes`
  for the whole test. No Redis, no ``testing`` extra needed.
* ``ws4redis_live_server``: a :class:`~ws4redis_uwsgi.testing.LiveServer`
  for the test session. With pytest-django it starts after the test
  databases were made (``django_db_setup``) and stops before they go.
* ``ws4redis_live``: that server for one test: Redis emptied first (a
  private one), the test process's publishers pointed at it, the test's
  websockets closed after it. With pytest-django the test needs committed
  data: ``@pytest.mark.django_db(transaction=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .capture import Publishes
    from .live import LiveServer


@pytest.fixture
def ws4redis_published() -> Iterator[Publishes]:
    """What the test published through ``RedisPublisher``, recorded instead of sent to Redis."""
    from .capture import capture_publishes

    with capture_publishes() as published:
        yield published


@pytest.fixture(scope="session")
def ws4redis_live_server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """A real redis-server and uWSGI websocket worker for the session (see :class:`~ws4redis_uwsgi.testing.LiveServer`)."""
    from .live import LiveServer

    if request.config.pluginmanager.hasplugin("django"):
        request.getfixturevalue("django_db_setup")  # the worker reads the test databases
    server = LiveServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def ws4redis_live(ws4redis_live_server: LiveServer) -> Iterator[LiveServer]:
    """The session's live server, for this test: clean Redis, publishers pointed at it, websockets closed after."""
    from django.test import override_settings

    ws4redis_live_server.reset()
    try:
        with override_settings(WS4REDIS_CONNECTION=ws4redis_live_server.redis_url):
            yield ws4redis_live_server
    finally:
        ws4redis_live_server.close_clients()
