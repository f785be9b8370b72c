"""ws4redis's import path of the websocket loop: :mod:`ws4redis_uwsgi.server.loop`."""

from .server.loop import WebsocketWSGIServer

__all__ = ["WebsocketWSGIServer"]
