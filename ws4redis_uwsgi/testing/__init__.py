"""Tools for testing code that uses ws4redis_uwsgi: docs/testing.md, "Testing your code".

* :func:`capture_publishes` (:mod:`.capture`): what the code under test
  published (facility, audiences, message, expire, binary), recorded instead
  of sent; no Redis needed, no extra dependency.
* :class:`LiveServer` (:mod:`.live`): a real ``redis-server`` and a real
  uWSGI websocket worker for the project's settings and test database, with
  :class:`WebsocketClient` (:mod:`.client`), a websocket test client that
  connects as a logged-in user and asserts what it receives. Needs the
  ``testing`` extra (``pip install ws4redis-uwsgi[testing]``).
* :class:`LiveWebsocketMixin` and :class:`LiveWebsocketTestCase`
  (:mod:`.testcases`) for ``unittest`` and Django's test runner.
* pytest fixtures (:mod:`.pytest_plugin`): ``ws4redis_published``,
  ``ws4redis_live`` and ``ws4redis_live_server``; enable them with
  ``pytest_plugins = ["ws4redis_uwsgi.testing.pytest_plugin"]``.

This package sits outside the rooms of :mod:`ws4redis_uwsgi` (server, bus,
django, core): it uses them, nothing there uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capture import Publish, Publishes, capture_publishes
    from .client import HandshakeRefusedError, WebsocketClient
    from .live import LiveServer
    from .testcases import LiveWebsocketMixin, LiveWebsocketTestCase

__all__ = [
    "HandshakeRefusedError",
    "LiveServer",
    "LiveWebsocketMixin",
    "LiveWebsocketTestCase",
    "Publish",
    "Publishes",
    "WebsocketClient",
    "capture_publishes",
]

# Imported when first named: the live part needs the `testing` extra (websockets), and
# uWSGI's worker imports .worker_settings before Django is set up, which .capture needs.
_LAZY = {
    "Publish": "capture",
    "Publishes": "capture",
    "capture_publishes": "capture",
    "HandshakeRefusedError": "client",
    "WebsocketClient": "client",
    "LiveServer": "live",
    "LiveWebsocketMixin": "testcases",
    "LiveWebsocketTestCase": "testcases",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
