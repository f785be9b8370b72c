"""The database reads of a logged-in handshake, and of live authorization's look at an open websocket.

    .venv/bin/python bench/auth_reads.py [--users 2000]

Why: a logged-in first visit reads a session row, a user row and the
user's group names before its websocket opens, and every worker looks
again at each logged-in websocket's session and user within
``WS4REDIS_SESSION_RECHECK`` (60 s): with thousands of websockets per
worker, each look costs about what a handshake's reads cost. Here, in one
process (no uWSGI, no Redis), over ``--users`` users each with a session
as Django's ``login()`` stores it, in the SQLite database of the logged-in
handshake scenario (``peers.py --make-sessions``), this process's CPU per
call (``time.thread_time``):

* a handshake's reads: ``load_session_and_user`` and the identity with
  groups, each session once (a first visit: the identity cache is off);
* a token handshake's: ``read_token`` and the identity with groups, a
  token per user (no identity cache for tokens: each is a first visit);
* a look: ``authority.read_again`` (without groups), by the compiled queries (what a
  worker does) and through the ORM (``ModelBackend.get_user``, what it did
  before), each session once per pass.

In a worker everything costs about 1.7 times as much (bench/README.md,
"Where the goals are not met yet").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

BENCH = Path(__file__).resolve().parent


def per_call(fn: Callable[[Any], Any], items: Sequence[Any]) -> float:
    """Microseconds of this thread's CPU per ``fn(item)``."""
    started = time.thread_time()
    for item in items:
        fn(item)
    return (time.thread_time() - started) / len(items) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000, help="users, each with a session (default 2000)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the sessions per figure (default 3)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ws4redis-auth-reads-"))
    try:
        return measure(args, workdir / "bench.sqlite3")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(args: argparse.Namespace, db: Path) -> int:
    os.environ["BENCH_DB"] = str(db)
    os.environ["DJANGO_SETTINGS_MODULE"] = "peersite.settings_ws4redis_uwsgi"
    sys.path.insert(0, str(BENCH))
    from systems import make_sessions_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        make_sessions_main(args.users)  # sets Django up
    keys = [cookie.partition("=")[2] for cookie in json.loads(out.getvalue())]

    from django.conf import settings
    from django.contrib.auth import SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from ws4redis_uwsgi.bus.subscriber import Grant
    from ws4redis_uwsgi.core.channels import ClientRequest
    from ws4redis_uwsgi.django import auth_lookup
    from ws4redis_uwsgi.django.identity import groups_read_with, identity_from_request, load_session_and_user
    from ws4redis_uwsgi.django.tokens import issue_token, read_token
    from ws4redis_uwsgi.server.authority import read_again

    class Request:
        def __init__(self, key: str) -> None:
            self.COOKIES = {settings.SESSION_COOKIE_NAME: key}

    def handshake(key: str) -> None:
        request = Request(key)
        load_session_and_user(request)
        assert identity_from_request(request).groups  # a logged-in user in two groups

    def token_handshake(token: str) -> None:
        claims = read_token(token)
        request = Request("")
        request.session, request.user = None, claims.user  # type: ignore[attr-defined]
        groups_read_with(request, claims.user, claims.groups)
        assert identity_from_request(request).groups  # a user in two groups

    grants = [
        Grant(
            user_pk=SessionStore(key).load()[SESSION_KEY],
            username="",
            session_key=key,
            ref=None,
            wanted=ClientRequest(("subscribe-user",)),
            groups=(),
        )
        for key in keys
    ]

    def look(grant: Grant) -> None:
        assert read_again(grant, with_groups=False)[0] is not None

    from django.contrib.auth import get_user_model

    tokens = [issue_token(user) for user in get_user_model()._default_manager.filter(pk__in=[g.user_pk for g in grants])]
    handshake(keys[0])  # the queries compile once
    token_handshake(tokens[0])
    look(grants[0])
    rows: list[tuple[str, list[float]]] = [
        ("a handshake's reads (session, user, groups)", [per_call(handshake, keys) for _ in range(args.passes)]),
        ("a token handshake's reads (user, groups)", [per_call(token_handshake, tokens) for _ in range(args.passes)]),
        ("a look at an open websocket (compiled queries)", [per_call(look, grants) for _ in range(args.passes)]),
    ]
    with mock.patch.object(auth_lookup, "backend_user_and_groups", lambda *_: (auth_lookup.UNANSWERED, None)):
        rows.append(("a look through the ORM (before)", [per_call(look, grants) for _ in range(args.passes)]))
    print(f"auth reads: {args.users:,} users with a session each, SQLite, CPU per call in one process ({args.passes} passes)")
    for name, figures in rows:
        print(f"  {name:48s} {', '.join(f'{f:6.0f} µs' for f in figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
