"""The database of the logged-in handshake scenario, shared by the three peers' settings.

With ``BENCH_DB`` set (a SQLite file that ``peers.py --make-sessions`` filled
with users and their sessions), every peer keeps sessions in the database,
Django's default, so a handshake with a session cookie costs each of them a
session and a user lookup. Without it the sites have no database at all.
"""

import os

PATH = os.environ.get("BENCH_DB")

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": PATH}} if PATH else {}
SESSION_ENGINE = "django.contrib.sessions.backends.db" if PATH else "django.contrib.sessions.backends.signed_cookies"
