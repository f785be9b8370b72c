"""A small Django site for the integration tests: the one the uWSGI websocket worker loads.

The test run chooses the database (an SQLite file or a PostgreSQL URL) and the
Redis URL and passes them in the environment, so the test process and the
uWSGI worker share both.
"""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "ws4redis_uwsgi",
]
# The pages' requests (Django's password change view in the live authorization tests) carry a session and a user.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "ws4redis_uwsgi.django.identity_claim.IdentityClaimMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"context_processors": ["ws4redis_uwsgi.context_processors.default"]},
    }
]


def site_database(where: str) -> dict:
    """The DATABASES entry for WS4REDIS_TEST_DB: a postgresql:// URL, else an SQLite file (or ":memory:")."""
    url = urlsplit(where)
    if url.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.path.lstrip("/"),
            "USER": unquote(url.username or ""),
            "PASSWORD": unquote(url.password or ""),
            "HOST": url.hostname or "",
            "PORT": str(url.port or ""),
        }
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": where, "OPTIONS": {"timeout": 20}}


DATABASES = {
    "default": site_database(os.environ.get("WS4REDIS_TEST_DB", ":memory:")),
    # A second database, for publish_message(on_commit=True, using=...).
    "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
ROOT_URLCONF = "tests.testsite.urls"
# Pages and websockets from `manage.py runserver` (tests/integration/test_runserver.py); uWSGI ignores it.
WSGI_APPLICATION = "ws4redis_uwsgi.django_runserver.application"
# Live authorization's tests run workers on each engine (WS4REDIS_TEST_SESSION_ENGINE); the
# cache engines keep sessions in the test Redis, which the test process and the workers share.
SESSION_ENGINE = os.environ.get("WS4REDIS_TEST_SESSION_ENGINE", "django.contrib.sessions.backends.db")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "sessions": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("WS4REDIS_TEST_REDIS", "redis://127.0.0.1:6379/0"),
        "KEY_PREFIX": "test-sessions",
    },
}
SESSION_CACHE_ALIAS = "sessions"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

WEBSOCKET_URL = "/ws/"
WS4REDIS_CONNECTION = os.environ.get("WS4REDIS_TEST_REDIS", "redis://127.0.0.1:6379/0")
WS4REDIS_PREFIX = "test"
WS4REDIS_EXPIRE = 60
WS4REDIS_HEARTBEAT = "--heartbeat--"
WS4REDIS_ALLOWED_CHANNELS = "tests.testsite.hooks.allowed_channels"
WS4REDIS_ON_GAP = "tests.testsite.hooks.fresh_state"
WS4REDIS_PROCESS_REQUEST = "tests.testsite.hooks.process_request"
WS4REDIS_SUBSCRIBER = "tests.testsite.hooks.SiteSubscriber"
if os.environ.get("WS4REDIS_TEST_STOCK"):  # a worker of the stock set-up: none of the site's hooks
    WS4REDIS_ALLOWED_CHANNELS = WS4REDIS_PROCESS_REQUEST = None
    WS4REDIS_SUBSCRIBER = "ws4redis_uwsgi.subscriber.RedisSubscriber"
if os.environ.get("WS4REDIS_TEST_HISTORY") == "off":  # a worker without history (tests/integration/test_store.py)
    WS4REDIS_HISTORY_LENGTH = WS4REDIS_HISTORY_SECONDS = 0
# Tests that probe limits start their own worker with these changed through the environment.
WS4REDIS_RATE_LIMIT = None if os.environ.get("WS4REDIS_TEST_RATE_LIMIT") == "none" else (20, 60)
if "WS4REDIS_TEST_RESTART_RATE" in os.environ:
    WS4REDIS_RESTART_RECONNECT_RATE = float(os.environ["WS4REDIS_TEST_RESTART_RATE"])
WS4REDIS_MAX_PENDING_MESSAGES = int(os.environ.get("WS4REDIS_TEST_MAX_PENDING", "1000"))
WS4REDIS_METRICS_PORT = int(os.environ["WS4REDIS_TEST_METRICS_PORT"]) if "WS4REDIS_TEST_METRICS_PORT" in os.environ else None
WS4REDIS_SESSION_RECHECK = float(os.environ.get("WS4REDIS_TEST_SESSION_RECHECK", "60"))
# Limits that are the package's constants, not settings, lowered in the workers of the tests that probe them.
# The package reads them from their modules when it uses them.
if "WS4REDIS_TEST_BACKLOG_BUDGET" in os.environ:
    from ws4redis_uwsgi.bus import budget

    budget.BACKLOG_BUDGET = int(os.environ["WS4REDIS_TEST_BACKLOG_BUDGET"])
if "WS4REDIS_TEST_BACKLOG_WAIT" in os.environ or "WS4REDIS_TEST_SEND_TIMEOUT" in os.environ:
    from ws4redis_uwsgi.server import limits

    limits.BACKLOG_WAIT = float(os.environ.get("WS4REDIS_TEST_BACKLOG_WAIT", limits.BACKLOG_WAIT))
    limits.SEND_TIMEOUT = float(os.environ.get("WS4REDIS_TEST_SEND_TIMEOUT", limits.SEND_TIMEOUT))
# Tests tell which channels a websocket was given by Redis's PUBSUB NUMSUB, which a channel kept
# subscribed after its last websocket would blur: off, but for a worker a test starts with
# WS4REDIS_TEST_CHANNEL_LINGER (tests/integration/test_page_change.py).
WS4REDIS_CHANNEL_LINGER = float(os.environ.get("WS4REDIS_TEST_CHANNEL_LINGER", "0"))
# The identity cache's seconds for a worker a test starts with WS4REDIS_TEST_IDENTITY_CACHE; else the default (5).
if "WS4REDIS_TEST_IDENTITY_CACHE" in os.environ:
    WS4REDIS_IDENTITY_CACHE = float(os.environ["WS4REDIS_TEST_IDENTITY_CACHE"])
WS4REDIS_MAX_CONNECTIONS = (
    int(os.environ["WS4REDIS_TEST_MAX_CONNECTIONS"]) if "WS4REDIS_TEST_MAX_CONNECTIONS" in os.environ else None
)
# The durable outbox's drain runs in workers a test starts with WS4REDIS_TEST_OUTBOX_DRAIN=<seconds between rounds>.
if "WS4REDIS_TEST_OUTBOX_DRAIN" in os.environ:
    WS4REDIS_OUTBOX_DRAIN_INTERVAL = float(os.environ["WS4REDIS_TEST_OUTBOX_DRAIN"])
    WS4REDIS_OUTBOX_GRACE = float(os.environ["WS4REDIS_TEST_OUTBOX_GRACE"])
# Presence on the facilities the presence tests use; a short TTL for the worker the SIGKILL test starts.
WS4REDIS_PRESENCE = "tests.testsite.hooks.has_presence"
WS4REDIS_PRESENCE_TTL = float(os.environ.get("WS4REDIS_TEST_PRESENCE_TTL", "30"))

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"ws4redis_uwsgi": {"handlers": ["console"], "level": "INFO"}},
}
