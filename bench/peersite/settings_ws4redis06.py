"""django-websocket-redis 0.6 (``ws4redis``): its documented minimal configuration, broadcast only.

Served by ``uwsgi --module peersite.wsgi_ws4redis06:application --gevent N``.
"""

import os

from peersite.bench_db import DATABASES, SESSION_ENGINE  # noqa: F401 - none, or the logged-in scenario's

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "ws4redis"]
ROOT_URLCONF = "peersite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

WEBSOCKET_URL = "/ws/"
WS4REDIS_CONNECTION = {"host": "127.0.0.1", "port": int(os.environ.get("BENCH_REDIS_PORT", "6379")), "db": 0, "password": None}
WS4REDIS_PREFIX = None
WS4REDIS_HEARTBEAT = None

# ws4redis logs its failures on 'django.request'; into the uWSGI log, so the harness can count them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False}},
}
