"""The live server for ``unittest`` and Django's test runner: a mixin, and a ready ``TransactionTestCase``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from django.test import TransactionTestCase, override_settings

from .client import WebsocketClient
from .live import LiveServer

__all__ = ["LiveWebsocketMixin", "LiveWebsocketTestCase"]


class LiveWebsocketMixin:
    """Starts a :class:`LiveServer` for the test class; each test gets a clean Redis and :meth:`websocket`.

    Mix it into a ``TransactionTestCase`` (or use :class:`LiveWebsocketTestCase`):
    the worker is another process and sees only committed rows, and Django's
    ``TestCase`` commits nothing. The servers start once per class, after the
    test databases were made, and stop when the class is done; meanwhile the
    test process's publishers use the live Redis (``WS4REDIS_CONNECTION``
    overridden). Set :attr:`live_server_options` for :class:`LiveServer`'s
    keyword arguments.
    """

    #: Keyword arguments of :class:`LiveServer` (``redis_url``, ``settings``, ``cores`` ...).
    live_server_options: ClassVar[Mapping[str, Any]] = {}
    live_server: ClassVar[LiveServer]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        server = LiveServer(**cls.live_server_options)
        # Class cleanups run even when a later part of setUpClass fails.
        cls.addClassCleanup(server.stop)  # type: ignore[attr-defined]
        cls.live_server = server.start()
        overridden = override_settings(WS4REDIS_CONNECTION=server.redis_url)
        overridden.enable()
        cls.addClassCleanup(overridden.disable)  # type: ignore[attr-defined]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.live_server.reset()
        self.addCleanup(self.live_server.close_clients)  # type: ignore[attr-defined]

    def websocket(self, facility: str, query: str | Iterable[str] = "subscribe-broadcast", **options: Any) -> WebsocketClient:
        """An open websocket to ``facility``: :meth:`LiveServer.connect`, closed after the test."""
        return self.live_server.connect(facility, query, **options)


class LiveWebsocketTestCase(LiveWebsocketMixin, TransactionTestCase):
    """A ``TransactionTestCase`` with a live Redis and websocket worker (see :class:`LiveWebsocketMixin`)."""
