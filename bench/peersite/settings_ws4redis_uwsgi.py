"""ws4redis_uwsgi from this checkout: broadcast only, no database, defaults otherwise.

Served by ``uwsgi --module ws4redis_uwsgi.wsgi_websocket:application --gevent N``.
"""

import os

from peersite.bench_db import DATABASES, SESSION_ENGINE  # noqa: F401 - none, or the logged-in scenario's

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
# The load generator sends ``Origin: http://127.0.0.1``, checked against these.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "ws4redis_uwsgi"]
ROOT_URLCONF = "peersite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

WEBSOCKET_URL = "/ws/"
WS4REDIS_CONNECTION = f"redis://127.0.0.1:{os.environ.get('BENCH_REDIS_PORT', '6379')}/0"
WS4REDIS_PREFIX = None  # channel names as ws4redis 0.6 has them: broadcast:<facility>
WS4REDIS_HEARTBEAT = None
WS4REDIS_ALLOW_MISSING_ORIGIN = True
# The idle scenario's worker has a few async cores and holds this many websockets (bench/systems.py).
if os.environ.get("BENCH_MAX_CONNECTIONS"):
    WS4REDIS_MAX_CONNECTIONS = int(os.environ["BENCH_MAX_CONNECTIONS"])

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"ws4redis_uwsgi": {"handlers": ["console"], "level": "WARNING"}},
}
