"""ws4redis's import path of the uWSGI adapter: :mod:`ws4redis_uwsgi.server.uwsgi`.

A site's own ``wsgi_websocket.py`` from the ws4redis days imports
``uWSGIWebsocketServer`` from here, after patching only redis-py's socket
module: the hub and Django's database access need the whole standard library
patched by gevent, before Django is imported, so this path does that first.
The package's own entry point, :mod:`ws4redis_uwsgi.wsgi_websocket`, patches
by itself.
"""

import gevent.monkey

try:
    import uwsgi
except ImportError:  # imported outside uWSGI, for documentation or checks
    uwsgi = None

if uwsgi is not None and not gevent.monkey.is_module_patched("socket"):
    gevent.monkey.patch_all()

from .server.uwsgi import uWSGIWebsocket, uWSGIWebsocketServer

__all__ = ["uWSGIWebsocket", "uWSGIWebsocketServer"]
