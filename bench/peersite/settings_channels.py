"""Django Channels 4 under daphne, with channels_redis's pub/sub layer: broadcast, and the session and user of the cookie."""

import os

from peersite.bench_db import DATABASES, SESSION_ENGINE  # noqa: F401 - none, or the logged-in scenario's

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "channels"]
ROOT_URLCONF = "peersite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ASGI_APPLICATION = "peersite.asgi_channels.application"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [f"redis://127.0.0.1:{os.environ.get('BENCH_REDIS_PORT', '6379')}/0"]},
    }
}
