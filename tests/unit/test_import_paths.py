"""ws4redis's import paths stay: every public name of django-websocket-redis, imported the way its users import it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.servers import REPO

#: ws4redis module -> the public names its users import from it.
WS4REDIS_NAMES = {
    "publisher": ["RedisPublisher"],
    "redis_store": ["RedisMessage", "RedisStore", "SELF"],
    "subscriber": ["RedisSubscriber"],
    "uwsgi_runserver": ["uWSGIWebsocketServer", "uWSGIWebsocket"],
    "wsgi_server": ["WebsocketWSGIServer"],
    "django_runserver": ["application"],
    "context_processors": ["default"],
    "exceptions": ["WebSocketError", "HandshakeError", "UpgradeRequiredError", "FrameTooLargeException"],
    "settings": ["WEBSOCKET_URL", "WS4REDIS_CONNECTION", "WS4REDIS_PREFIX", "WS4REDIS_EXPIRE", "WS4REDIS_HEARTBEAT"],
}


@pytest.mark.parametrize(("module", "names"), list(WS4REDIS_NAMES.items()))
def test_every_public_name_of_ws4redis_imports_from_its_old_path(module, names):
    imported = importlib.import_module(f"ws4redis_uwsgi.{module}")
    for name in names:
        assert getattr(imported, name) is not None, f"ws4redis_uwsgi.{module}.{name}"


@pytest.mark.parametrize("module", sorted(WS4REDIS_NAMES))
def test_every_name_a_re_export_module_lists_in_its_all_imports(module):
    """A name a re-export lists but no longer has breaks ``import *`` (``settings`` has no ``__all__``;
    ``wsgi_websocket`` patches gevent and has none: it is imported in a process of its own below)."""
    imported = importlib.import_module(f"ws4redis_uwsgi.{module}")
    assert [name for name in getattr(imported, "__all__", ()) if not hasattr(imported, name)] == []


def test_the_old_paths_are_the_same_objects_as_the_new_ones():
    from ws4redis_uwsgi.bus.publisher import RedisPublisher
    from ws4redis_uwsgi.bus.subscriber import RedisSubscriber
    from ws4redis_uwsgi.publisher import RedisPublisher as OldPublisher
    from ws4redis_uwsgi.server.loop import WebsocketWSGIServer
    from ws4redis_uwsgi.subscriber import RedisSubscriber as OldSubscriber
    from ws4redis_uwsgi.wsgi_server import WebsocketWSGIServer as OldServer

    assert (OldPublisher, OldSubscriber, OldServer) == (RedisPublisher, RedisSubscriber, WebsocketWSGIServer)


def test_the_vassal_entry_point_imports_and_builds_the_application():
    """``ws4redis_uwsgi.wsgi_websocket`` patches the standard library for gevent: imported in a process of its own."""
    code = "import ws4redis_uwsgi.wsgi_websocket as m; print(type(m.application).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"DJANGO_SETTINGS_MODULE": "tests.testsite.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "uWSGIWebsocketServer"
