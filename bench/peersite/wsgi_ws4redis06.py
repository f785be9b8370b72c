"""The websocket entry point of django-websocket-redis 0.6, as its documentation (docs/running.rst) gives it.

Only redis-py's socket module is swapped for gevent's; the websocket loop
waits in ``gevent.select.select`` on the websocket and its own Redis
subscription connection.
"""

import os

import gevent.socket
import redis.connection

redis.connection.socket = gevent.socket
os.environ.update(DJANGO_SETTINGS_MODULE="peersite.settings_ws4redis06")
from ws4redis.uwsgi_runserver import uWSGIWebsocketServer  # noqa: E402

application = uWSGIWebsocketServer()
