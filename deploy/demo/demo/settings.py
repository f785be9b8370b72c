"""Settings of the ws4redis_uwsgi demo: a chat and a live counter.

Both vassals load this module. Paths and Redis come from the environment that
deploy/run_demo.py sets: DEMO_RUN (database, static files) and
WS4REDIS_CONNECTION or REDIS_URL (default: Redis on localhost).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("DEMO_RUN", BASE_DIR.parent / "run"))

SECRET_KEY = os.environ.get("DEMO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DEMO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Above staticfiles: its runserver (pages, static files and websockets) is the one
    # `manage.py runserver` runs.
    "ws4redis_uwsgi",
    "django.contrib.staticfiles",
    "chat",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A logged-in page's websocket opens on what the page read (docs/authorization.md).
    "ws4redis_uwsgi.django.identity_claim.IdentityClaimMiddleware",
]
ROOT_URLCONF = "demo.urls"
# What `manage.py runserver` serves: pages and websockets on one port (the uWSGI vassals name
# their own modules: demo.wsgi for the pages, ws4redis_uwsgi.wsgi_websocket for the websockets).
WSGI_APPLICATION = "ws4redis_uwsgi.django_runserver.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "ws4redis_uwsgi.context_processors.default",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": RUN_DIR / "demo.sqlite3",
        "OPTIONS": {"timeout": 20},
        # A file, not SQLite's default in-memory test database: the tests' websocket worker
        # (ws4redis_uwsgi.testing) is another process and opens it too.
        "TEST": {"NAME": RUN_DIR / "test-demo.sqlite3"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = RUN_DIR / "static"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# -- ws4redis_uwsgi ----------------------------------------------------------------
WEBSOCKET_URL = "/ws/"
WS4REDIS_CONNECTION = os.environ.get("WS4REDIS_CONNECTION") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
WS4REDIS_PREFIX = "demo"
WS4REDIS_EXPIRE = 300
WS4REDIS_HEARTBEAT = "--heartbeat--"
# Metrics and health of the websocket vassal's worker on loopback: http://127.0.0.1:9300/metrics and /health.
WS4REDIS_METRICS_PORT = int(os.environ.get("DEMO_METRICS_PORT", "9300")) or None
# Without nginx (run_demo.py's DEMO_DIRECT), the websocket vassal listens on a port of its own.
WS4REDIS_WEBSOCKET_PORT = int(os.environ["DEMO_WS_PORT"]) if os.environ.get("DEMO_DIRECT") else None
# Browsers may not publish on the counter: only the view does.
WS4REDIS_ALLOWED_CHANNELS = "chat.channels.allowed_channels"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"ws4redis_uwsgi": {"handlers": ["console"], "level": "INFO"}},
}
