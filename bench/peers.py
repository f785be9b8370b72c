"""Peers: ws4redis_uwsgi against django-websocket-redis 0.6 and Django Channels 4, same load generator.

Three systems, each in a virtual environment of its own (built under
``bench/.envs/`` on the first run and reused afterwards) and each with a
redis-server of its own, on loopback, in the same run:

* **ws4redis_uwsgi** from this checkout (``pip install -e``), one uWSGI
  websocket worker under gevent, ``ws4redis_uwsgi.wsgi_websocket:application``,
  settings ``bench/peersite/settings_ws4redis_uwsgi.py``;
* **ws4redis 0.6** (``django-websocket-redis`` 0.6.0 from PyPI), one uWSGI
  worker under gevent, its documented ``wsgi_websocket.py``
  (``bench/peersite/wsgi_ws4redis06.py``); pinned to what it ran on in 2019
  (see ``PEERS``);
* **Channels 4**: one daphne process, ``channels_redis``'s pub/sub layer
  (``RedisPubSubChannelLayer``), a consumer that joins a group on connect
  and forwards ``broadcast.message`` events (``bench/peersite/asgi_channels.py``).

Every client connects to ``ws://127.0.0.1:PORT/ws/bench?subscribe-broadcast``
with ``Origin: http://127.0.0.1``, from the same client processes (``--procs``,
default 2: asyncio on uvloop with the lean protocol of ``bench/wsclient.py``,
a few µs per received message, so the client is not what limits the figures). Messages are ``{"p":phase,"seq":n,"t":ns}``
with ``t`` read from ``time.monotonic_ns()`` just before publishing; the
publisher is a helper process in the peer's own environment (this file,
``--publisher``): plain Redis PUBLISH to ``broadcast:bench`` for both ws4redis
peers, ``channel_layer.group_send`` for Channels.

Scenarios, each printed as one table with every peer's figure and its ratio
to ws4redis_uwsgi, and the load generator's own CPU:

(a) broadcast fan-out to N clients at increasing publish rates: deliveries/s,
    lost deliveries, p50/p99 publish-to-receive latency;
(b) server CPU per delivered message, same phases (utime+stime from
    ``/proc`` of the server's processes only; Redis shown apart);
(c) many idle connections: server RSS per connection; ws4redis 0.6 waits in
    ``select()`` with two descriptors per socket (its own Redis connection),
    so it keeps only the sockets whose descriptors stay below 1024: the table
    records how many it held;
(d) a burst of connections opened as fast as the client can: handshakes/s and
    server CPU per handshake.

Usage (from the repository root)::

    python bench/peers.py [--quick] [--peers ws4redis_uwsgi,ws4redis-0.6,channels-4]
                          [--scenarios a,c,d] [--rebuild] [--keep]

A peer that cannot be installed or started is reported as such in the tables;
every server this starts is stopped at the end, also on Ctrl-C. The exit
status is 1 when ws4redis_uwsgi failed a scenario or lost, repeated or
reordered a message.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import json
import multiprocessing
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ENVS = BENCH / ".envs"

FACILITY = "bench"
WS_PATH = f"/ws/{FACILITY}?subscribe-broadcast"
#: The logged-in clients also ask for their user's channel, so both ws4redis peers look the user up
#: (Channels' AuthMiddlewareStack always does).
WS_PATH_USER = f"/ws/{FACILITY}?subscribe-broadcast&subscribe-user"
#: Both ws4redis peers check Origin against ALLOWED_HOSTS (ws4redis_uwsgi) or ignore it (0.6); Channels' validator too.
ORIGIN = "http://127.0.0.1"
WARMUP = "warmup"
#: Where both ws4redis peers listen for the facility's broadcasts (no WS4REDIS_PREFIX).
REDIS_CHANNEL = f"broadcast:{FACILITY}"
#: The group every Channels consumer joins (peersite/asgi_channels.py).
CHANNELS_GROUP = FACILITY
#: The listen backlog of every server (uWSGI --listen, daphne's endpoint; Twisted's default is 50).
BACKLOG = 1024
#: Stop waiting for a phase's deliveries when none arrived for this long.
IDLE_TIMEOUT = 6.0

BASELINE = "ws4redis_uwsgi"


@dataclass(frozen=True)
class PeerSpec:
    name: str
    requirements: tuple[str, ...]
    server: str  # "uwsgi" or "daphne"
    app: str  # uWSGI --module or daphne's application
    settings: str  # DJANGO_SETTINGS_MODULE
    publisher: str  # "redis" (PUBLISH) or "channels" (group_send)
    dists: tuple[str, ...]  # distributions whose versions the run prints


PEERS: tuple[PeerSpec, ...] = (
    PeerSpec(
        name="ws4redis_uwsgi",
        requirements=("-e", str(REPO)),
        server="uwsgi",
        app="ws4redis_uwsgi.wsgi_websocket:application",
        settings="peersite.settings_ws4redis_uwsgi",
        publisher="redis",
        dists=("ws4redis-uwsgi", "Django", "redis", "gevent", "greenlet", "uWSGI"),
    ),
    # django-websocket-redis 0.6.0 (September 2019) with what it was released against:
    # Django 2.2 LTS and redis-py 3.x (StrictRedis, PubSub.connection._sock). Newer Django
    # still imports it and serves websockets, but HttpResponse._headers went away in Django
    # 3.2, so every refused request (no upgrade, failed handshake) then crashes in its
    # error path. Both install and run on Python 3.11. six is its Python 2/3 shim. gevent
    # and uWSGI unpinned: the same releases the ws4redis_uwsgi environment gets.
    PeerSpec(
        name="ws4redis-0.6",
        requirements=("django-websocket-redis==0.6.0", "Django==2.2.28", "redis==3.5.3", "six", "gevent", "uWSGI"),
        server="uwsgi",
        app="peersite.wsgi_ws4redis06:application",
        settings="peersite.settings_ws4redis06",
        publisher="redis",
        dists=("django-websocket-redis", "Django", "redis", "six", "gevent", "greenlet", "uWSGI"),
    ),
    PeerSpec(
        name="channels-4",
        requirements=("channels>=4,<5", "daphne>=4,<5", "channels-redis>=4,<5", "Django>=5.2,<6"),
        server="daphne",
        app="peersite.asgi_channels:application",
        settings="peersite.settings_channels",
        publisher="channels",
        dists=("channels", "channels-redis", "daphne", "Django", "Twisted", "autobahn", "redis", "msgpack", "asgiref"),
    ),
)


# -- /proc --------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # fields from 3 (state) on


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def proc_rss_kib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE / 1024
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def machine_busy() -> float:
    """CPU seconds all CPUs spent busy (not idle, not iowait) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


class CpuWindow:
    """CPU seconds of named groups of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[int, float] = {}
        self.delta: dict[str, float] = {}
        self.per_pid: dict[int, float] = {}
        self.wall = 0.0
        self.others = 0.0

    def start(self) -> CpuWindow:
        self.before = {pid: proc_cpu(pid) for pids in self.groups.values() for pid in pids}
        self._machine = machine_busy()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> CpuWindow:
        self.wall = time.monotonic() - self._t0
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                used = max(0.0, proc_cpu(pid) - self.before.get(pid, 0.0))
                self.per_pid[pid] = used
                total += used
            self.delta[name] = total
        self.others = max(0.0, machine_busy() - self._machine - sum(self.delta.values()))
        return self

    def share(self, seconds: float) -> float:
        """CPU seconds as a fraction of one core over the window."""
        return seconds / self.wall if self.wall else float("nan")


# -- processes this run starts ------------------------------------------------------------------

#: Every server and helper process still running, stopped on exit whatever happens.
LIVE: set[Any] = set()


def stop_all_live() -> None:
    for thing in list(LIVE):
        with contextlib.suppress(Exception):
            thing.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, what: str, alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class Child:
    """A process of ours in a session of its own: SIGTERM, then SIGKILL to its whole group."""

    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, pipes: bool = False) -> None:
        """Start ``cmd``; its output goes to ``log_path`` (only stderr there with ``pipes``: stdin and stdout are ours)."""
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            start_new_session=True,
        )
        LIVE.add(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group it leads (uWSGI workers, say).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        with contextlib.suppress(Exception):
            self._log.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")}
    env.update(extra)
    return env


class RedisProcess(Child):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir

    def start(self) -> RedisProcess:
        exe = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.workdir), "--maxclients", "15000"]
        self._spawn(cmd, clean_env(), self.workdir, self.workdir / f"redis-{self.port}.log")
        wait_until(lambda: port_open(self.port), 10, f"redis-server on port {self.port}", self.alive)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def clients(self) -> int:
        """Connections Redis has open now, other than the one asking."""
        import redis

        with redis.Redis(port=self.port) as client:
            return int(client.info("clients")["connected_clients"]) - 1


@dataclass
class EnvInfo:
    spec: PeerSpec
    path: Path
    python: Path
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    built: bool = False


class Server(Child):
    """The peer's websocket server: one uWSGI worker (plus its master), or one daphne process."""

    def __init__(self, env: EnvInfo, workdir: Path, redis_port: int, cores: int, db: Path | None = None) -> None:
        self.env = env
        self.db = db
        self.spec = env.spec
        self.workdir = workdir
        self.redis_port = redis_port
        self.cores = cores
        self.port = free_port()

    def url(self, path: str = WS_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60) -> Server:
        bindir = self.env.path / "bin"
        env = clean_env(BENCH_REDIS_PORT=str(self.redis_port), DJANGO_SETTINGS_MODULE=self.spec.settings)
        if self.db is not None:
            env["BENCH_DB"] = str(self.db)
        if self.spec.server == "uwsgi":
            # The options of tests/servers.py: one worker, gevent, HTTP straight into the worker.
            cmd = [str(bindir / "uwsgi"), "--http-socket", f"127.0.0.1:{self.port}", "--http-websockets"]
            cmd += ["--gevent", str(self.cores), "--master", "--workers", "1", "--module", self.spec.app]
            cmd += ["--virtualenv", str(self.env.path), "--pythonpath", str(BENCH), "--listen", str(BACKLOG)]
            cmd += ["--die-on-term", "--buffer-size", "8192", "--need-app", "--disable-logging", "--max-fd", "20000"]
        else:
            env["PYTHONPATH"] = str(BENCH)
            # -v 0: no access log (uWSGI runs with --disable-logging); the backlog as uWSGI's.
            endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog={BACKLOG}"
            cmd = [str(bindir / "daphne"), "-e", endpoint, "-v", "0", self.spec.app]
        self._spawn(cmd, env, self.workdir, self.workdir / f"{self.spec.name}-{self.port}.log")
        try:
            wait_until(
                lambda: port_open(self.port) and (self.spec.server != "uwsgi" or self.worker_pids()),
                timeout,
                f"{self.spec.name} on port {self.port}",
                self.alive,
            )
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log: {tail(self.log_path)}") from None
        return self

    def worker_pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc is not None else []

    def pids(self) -> list[int]:
        """The server's processes: uWSGI master and worker, or daphne."""
        return [self.proc.pid, *self.worker_pids()] if self.proc is not None else []

    def rss_kib(self) -> float:
        return sum(proc_rss_kib(pid) for pid in self.pids())

    def fds(self) -> int:
        return sum(proc_fds(pid) for pid in self.pids())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# -- the environments ---------------------------------------------------------------------------


def build_env(spec: PeerSpec, rebuild: bool, log: Callable[[str], None]) -> EnvInfo:
    """The peer's virtual environment under bench/.envs, created or reused."""
    path = ENVS / spec.name
    info = EnvInfo(spec, path, path / "bin" / "python")
    stamp = path / ".bench-requirements"
    wanted = {"python": sys.version.split()[0], "requirements": list(spec.requirements)}
    if "-e" in spec.requirements:
        wanted["setup.cfg"] = hashlib.sha256((REPO / "setup.cfg").read_bytes()).hexdigest()[:16]
    wanted_text = json.dumps(wanted, sort_keys=True)
    try:
        reuse = not rebuild and info.python.exists() and stamp.exists() and stamp.read_text() == wanted_text
        if not reuse:
            log(f"building {path.relative_to(REPO)}: pip install {' '.join(spec.requirements)} ...")
            shutil.rmtree(path, ignore_errors=True)
            ENVS.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300, capture_output=True)
            with open(path / "install.log", "wb") as out:
                result = subprocess.run(
                    [str(info.python), "-m", "pip", "install", "--disable-pip-version-check", *spec.requirements],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=1800,
                    env=clean_env(),
                )
            if result.returncode != 0:
                raise RuntimeError(f"pip install failed ({tail(path / 'install.log', 3)})")
            stamp.write_text(wanted_text)
            info.built = True
        probe = (
            "import importlib.metadata as m, json, sys\n"
            "v = {}\n"
            "for d in sys.argv[1:]:\n"
            "    try: v[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: v[d] = '-'\n"
            "print(json.dumps(v))\n"
        )
        out = subprocess.run([str(info.python), "-c", probe, *spec.dists], capture_output=True, timeout=60, check=True)
        info.versions = json.loads(out.stdout)
        exe = path / "bin" / ("uwsgi" if spec.server == "uwsgi" else "daphne")
        if not exe.exists():
            raise RuntimeError(f"{exe.name} is missing from {path}")
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as exc:
        info.error = f"not installed: {exc}"
    return info


# -- the publisher helper (runs in the peer's environment) -----------------------------------------


def publisher_main(kind: str) -> int:
    """``peers.py --publisher KIND``: publish what stdin asks for, one JSON reply per line on stdout."""
    port = int(os.environ["BENCH_REDIS_PORT"])
    publish: Callable[[str], int | None]
    if kind == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        client.ping()

        def publish(payload: str) -> int | None:
            return int(client.publish(REDIS_CHANNEL, payload))

    else:
        import django

        django.setup()
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        # One event loop for the whole run: async_to_sync(layer.group_send) would start a new
        # loop per call, and the pub/sub layer opens a new Redis connection per loop.
        loop = asyncio.new_event_loop()

        def publish(payload: str) -> int | None:
            loop.run_until_complete(layer.group_send(CHANNELS_GROUP, {"type": "broadcast.message", "text": payload}))
            return None

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "warmup":
            reply({"receivers": publish(WARMUP)})
        elif command["cmd"] == "run":
            phase, messages, rate = command["phase"], command["messages"], command["rate"]
            interval = 1e9 / rate if rate else 0.0
            receivers: set[int | None] = set()
            first = time.monotonic_ns()
            for seq in range(messages):
                if interval:
                    delay = first + seq * interval - time.monotonic_ns()
                    if delay > 0:
                        time.sleep(delay / 1e9)
                receivers.add(publish(f'{{"p":{phase},"seq":{seq},"t":{time.monotonic_ns()}}}'))
            reply({"first_ns": first, "last_ns": time.monotonic_ns(), "receivers": sorted(r for r in receivers if r is not None)})
        else:
            break
    return 0


def make_sessions_main(count: int) -> int:
    """``peers.py --make-sessions N`` (in a peer's environment, ``BENCH_DB`` set): users, their sessions, cookies on stdout.

    One password hash for every user (hashing thousands would take minutes);
    the sessions are what Django's login() stores, so each handshake with one
    of these cookies costs a session lookup, a user lookup and the check of
    the session's password hash, as a real logged-in browser does.
    """
    from datetime import timedelta

    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.core.management import call_command
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    password = make_password("bench")
    user_model.objects.bulk_create([user_model(username=f"user{i}", password=password) for i in range(count)])
    store, expires = SessionStore(), timezone.now() + timedelta(days=1)
    sessions, cookies = [], []
    for user in user_model.objects.order_by("pk"):
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(Session(session_key=key, session_data=store.encode(data), expire_date=expires))
        cookies.append(f"sessionid={key}")
    Session.objects.bulk_create(sessions)
    print(json.dumps(cookies))
    return 0


class Publisher(Child):
    """The helper process that publishes into one peer, driven over its stdin and stdout."""

    def __init__(self, env: EnvInfo, workdir: Path, redis_port: int) -> None:
        self.env = env
        self._buffer = b""
        env_vars = clean_env(BENCH_REDIS_PORT=str(redis_port), DJANGO_SETTINGS_MODULE=env.spec.settings, PYTHONPATH=str(BENCH))
        cmd = [str(env.python), str(Path(__file__).resolve()), "--publisher", env.spec.publisher]
        self._spawn(cmd, env_vars, workdir, workdir / f"publisher-{env.spec.name}.log", pipes=True)
        self._read(60)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the publisher did not answer within {timeout:.0f}s")
            if select.select([fd], [], [], min(remaining, 1.0))[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"the publisher exited: {tail(self.log_path)}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()
        super().stop(grace)


# -- the load generator's client processes ------------------------------------------------------


@dataclass
class Conn:
    ws: Any  # a wsclient.WebsocketClient
    records: list[tuple[int, bytes]] = field(default_factory=list)
    count: int = 0
    warm: bool = False
    closed: bool = False
    close_code: int | None = None


@dataclass
class PhaseState:
    recording: bool = False
    prefix: bytes = b""
    expected: int = 0
    pending: int = 0
    stale: int = 0
    done: asyncio.Event | None = None
    stop: asyncio.Event | None = None
    reporter: Any = None  # the task sending this phase's progress


def client_process(conn: Connection, url: str) -> None:
    """One client process: websockets to ``url``, driven by commands on ``conn``."""
    with contextlib.suppress(ImportError):
        import uvloop  # the faster event loop keeps the load generator well below the servers' cost

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_client_main(conn, url))
    conn.close()


async def _client_main(conn: Connection, url: str) -> None:
    from urllib.parse import urlsplit

    from wsclient import HandshakeError, connect

    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, f"{parts.path}?{parts.query}"
    warmup = WARMUP.encode()
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple] = asyncio.Queue()

    def on_command() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            commands.put_nowait(("exit",))

    loop.add_reader(conn.fileno(), on_command)
    # uvloop makes the pipe non-blocking; results are larger than the pipe's buffer, and
    # Connection.send expects to block until the coordinator has read them.
    os.set_blocking(conn.fileno(), True)
    conns: list[Conn] = []
    state = PhaseState()

    def finish_one() -> None:
        state.pending -= 1
        if state.pending == 0 and state.done is not None:
            state.done.set()

    def receiver(c: Conn) -> Callable[[bytes], None]:
        def on_message(message: bytes) -> None:
            now = time.monotonic_ns()
            if message == warmup:
                c.warm = True
            elif state.recording and message.startswith(state.prefix):
                c.records.append((now, message))
                c.count += 1
                if c.count == state.expected:
                    finish_one()
            else:
                state.stale += 1

        return on_message

    def on_closed(c: Conn) -> None:
        c.closed = True
        c.close_code = c.ws.close_code
        if state.recording and c.count < state.expected:
            finish_one()

    async def open_one(
        semaphore: asyncio.Semaphore, errors: dict[str, int], opened_at: list[int], timeout: float, cookie: str | None
    ) -> None:
        async with semaphore:
            c = Conn(None)
            try:
                c.ws = await connect(host, port, path, receiver(c), origin=ORIGIN, cookie=cookie, timeout=timeout)
            except HandshakeError as exc:
                key = f"HTTP {exc.status}" if exc.status else "HandshakeError"
                errors[key] = errors.get(key, 0) + 1
                return
            except Exception as exc:
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                return
            opened_at.append(time.monotonic_ns())
            conns.append(c)
            c.ws.closed.add_done_callback(lambda _: on_closed(c))

    async def report_phase(done: asyncio.Event, stop: asyncio.Event) -> None:
        waiters = {asyncio.create_task(done.wait()), asyncio.create_task(stop.wait())}
        while True:
            finished, _ = await asyncio.wait(waiters, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            if finished:
                break
            conn.send(("progress", sum(c.count for c in conns)))
        for task in waiters:
            task.cancel()
        conn.send(("done", sum(c.count for c in conns)))

    while True:
        command = await commands.get()
        kind = command[0]
        if kind == "open":
            count, concurrency, timeout, cookies = command[1], command[2], command[3], command[4]
            errors: dict[str, int] = {}
            opened_at: list[int] = []
            semaphore = asyncio.Semaphore(max(1, concurrency))
            started = time.monotonic_ns()
            per_client = [cookies[i % len(cookies)] for i in range(count)] if cookies else [None] * count
            await asyncio.gather(*(open_one(semaphore, errors, opened_at, timeout, cookie) for cookie in per_client))
            conn.send(("opened", len(opened_at), errors, started, max(opened_at, default=started)))
        elif kind == "warm_reset":
            for c in conns:
                c.warm = False
            conn.send(("warm_reset",))
        elif kind == "warm_check":
            live = [c for c in conns if not c.closed]
            conn.send(("warm", sum(1 for c in live if c.warm), len(live)))
        elif kind == "expect":
            phase, messages = command[1], command[2]
            for c in conns:
                c.records = []
                c.count = 0
            state.prefix = f'{{"p":{phase},'.encode()
            state.expected = messages
            state.stale = 0
            state.pending = sum(1 for c in conns if not c.closed)
            state.done, state.stop = asyncio.Event(), asyncio.Event()
            if state.pending == 0:
                state.done.set()
            state.recording = True
            state.reporter = asyncio.create_task(report_phase(state.done, state.stop))
            conn.send(("expecting",))
        elif kind == "stop":
            if state.stop is not None:
                state.stop.set()
        elif kind == "results":
            state.recording = False
            conn.send(("results", _summarize(conns, state)))
            for c in conns:
                c.records = []
        elif kind == "status":
            codes: dict[str, int] = {}
            for c in conns:
                if c.closed:
                    codes[str(c.close_code)] = codes.get(str(c.close_code), 0) + 1
            conn.send(("status", sum(1 for c in conns if not c.closed), codes))
        elif kind == "close":
            started = time.monotonic()
            live = [c for c in conns if not c.closed]
            await asyncio.gather(*(c.ws.close(timeout=command[1]) for c in live), return_exceptions=True)
            conns.clear()
            conn.send(("closed", len(live), time.monotonic() - started))
        elif kind == "exit":
            for c in conns:
                c.ws.abort()
            return


def _summarize(conns: list[Conn], state: PhaseState) -> dict[str, Any]:
    latencies = array("q")
    received = duplicates = out_of_order = 0
    last_receive = 0
    closed_codes: dict[str, int] = {}
    for c in conns:
        seen: set[int] = set()
        previous = -1
        for receive_ns, message in c.records:
            data = json.loads(message)
            seq = int(data["seq"])
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            received += 1
            if seq < previous:
                out_of_order += 1
            previous = max(previous, seq)
            latencies.append(receive_ns - int(data["t"]))
            last_receive = max(last_receive, receive_ns)
        if c.closed:
            closed_codes[str(c.close_code)] = closed_codes.get(str(c.close_code), 0) + 1
    return {
        "received": received,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "stale": state.stale,
        "incomplete": sum(1 for c in conns if c.count < state.expected),
        "last_receive_ns": last_receive,
        "latencies": latencies.tobytes(),
        "closed": closed_codes,
    }


class ClientPool:
    """The client processes of the load generator and their command pipes."""

    def __init__(self, url: str, procs: int) -> None:
        context = multiprocessing.get_context("spawn")  # children without the coordinator's state
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(procs):
            parent, child = context.Pipe()
            proc = context.Process(target=client_process, args=(child, url), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, *command: Any) -> None:
        for conn in self.conns:
            conn.send(command)

    def collect(self, kind: str, timeout: float, on_other: Callable[[int, tuple], None] | None = None) -> list[tuple]:
        """One ``kind`` reply from every process; other replies go to ``on_other``."""
        replies: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < len(self.conns):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"client processes did not report {kind!r} within {timeout:.0f}s")
            for ready in wait([c for i, c in enumerate(self.conns) if i not in replies], min(remaining, 0.5)):
                index = self.conns.index(ready)  # type: ignore[arg-type]
                try:
                    reply = ready.recv()  # type: ignore[union-attr]
                except EOFError:
                    raise RuntimeError(f"client process {index} died (exit code {self.procs[index].exitcode})") from None
                if reply[0] == kind:
                    replies[index] = reply
                elif on_other is not None:
                    on_other(index, reply)
        return [replies[i] for i in range(len(self.conns))]

    def ask(self, kind: str, *command: Any, timeout: float = 30) -> list[tuple]:
        self.send(*command)
        return self.collect(kind, timeout)

    def open(self, count: int, concurrency: int, timeout: float, cookies: list[str] | None = None) -> dict[str, Any]:
        """Open ``count`` websockets with at most ``concurrency`` handshakes in flight, over all processes.

        With ``cookies``, the clients send them in turn (``Cookie:`` headers of logged-in users).
        """
        n = len(self.conns)
        for i, conn in enumerate(self.conns):
            share = count // n + (1 if i < count % n else 0)
            conn.send(("open", share, max(1, concurrency // n), 30.0, cookies[i::n] if cookies else None))
        replies = self.collect("opened", timeout)
        errors: dict[str, int] = {}
        for reply in replies:
            for key, value in reply[2].items():
                errors[key] = errors.get(key, 0) + value
        opened = sum(r[1] for r in replies)
        started = min(r[3] for r in replies)
        finished = max(r[4] for r in replies)
        return {"opened": opened, "errors": errors, "seconds": (finished - started) / 1e9 if opened else float("nan")}

    def status(self) -> tuple[int, dict[str, int]]:
        replies = self.ask("status", "status")
        codes: dict[str, int] = {}
        for reply in replies:
            for key, value in reply[2].items():
                codes[key] = codes.get(key, 0) + value
        return sum(r[1] for r in replies), codes

    def close_all(self, timeout: float = 30) -> None:
        self.send("close", timeout)
        self.collect("closed", timeout + 30)

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()


# -- one peer, one scenario -----------------------------------------------------------------------


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))])


def uwsgi_cores(clients: int) -> int:
    """Async cores for ``clients`` websockets and ws4redis_uwsgi's reserve of 2% (for its 503)."""
    return clients + 100 + clients // 40


def log_findings(text: str, limit: int = 3) -> list[str]:
    """The most frequent error-looking lines of a server log, with their counts."""
    benign = ("running uWSGI as root", "no internal routing support", "HTTP/2 support not enabled")
    counted: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if any(b in line for b in benign):
            continue
        if "Error" in line or "error" in line or "Traceback" in line or "DAMN" in line or "Exception" in line:
            key = line[:160]
            counted[key] = counted.get(key, 0) + 1
    top = sorted(counted.items(), key=lambda item: -item[1])[:limit]
    return [f"{n} x {line}" for line, n in top]


class Stack:
    """redis-server, the peer's server, its publisher and the client pool, for one scenario."""

    def __init__(self, env: EnvInfo, run_dir: Path, clients: int, procs: int, users: int = 0) -> None:
        self.env = env
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{env.spec.name}-", dir=run_dir))
        self.clients = clients
        self.procs = procs
        #: With ``users``, a database of that many logged-in users; ``cookies`` holds their session cookies.
        self.users = users
        self.cookies: list[str] = []
        self.redis: RedisProcess | None = None
        self.server: Server | None = None
        self.publisher: Publisher | None = None
        self.pool: ClientPool | None = None

    def __enter__(self) -> Stack:
        try:
            self.redis = RedisProcess(self.workdir).start()
            db = self.make_sessions() if self.users else None
            self.server = Server(self.env, self.workdir, self.redis.port, uwsgi_cores(self.clients), db).start()
            self.publisher = Publisher(self.env, self.workdir, self.redis.port)
            self.warm_single()
            self.pool = ClientPool(self.server.url(WS_PATH_USER if self.users else WS_PATH), self.procs)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                self.pool.close_all(20)
            self.pool.stop()
            self.pool = None
        for child in (self.publisher, self.server, self.redis):
            if child is not None:
                child.stop()

    def make_sessions(self) -> Path:
        """A SQLite database with ``users`` users and a session each, in the peer's environment."""
        db = self.workdir / "bench.sqlite3"
        env = clean_env(DJANGO_SETTINGS_MODULE=self.env.spec.settings, BENCH_DB=str(db), PYTHONPATH=str(BENCH))
        cmd = [str(self.env.python), str(Path(__file__).resolve()), "--make-sessions", str(self.users)]
        done = subprocess.run(cmd, env=env, cwd=self.workdir, capture_output=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"--make-sessions failed: {done.stderr.decode(errors='replace')[-400:]}")
        self.cookies = json.loads(done.stdout)
        return db

    def warm_single(self, timeout: float = 30) -> None:
        """One websocket, opened and closed, until a broadcast reaches it: the server is ready and warm."""
        from websockets.sync.client import connect

        assert self.server is not None and self.publisher is not None
        deadline = time.monotonic() + timeout
        with connect(self.server.url(), origin=ORIGIN, open_timeout=timeout, ping_interval=None, compression=None) as ws:
            while True:
                self.publisher.call(10, cmd="warmup")
                try:
                    if ws.recv(timeout=0.5) == WARMUP:
                        break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the first client received no broadcast") from None
        time.sleep(0.5)

    def warm_all(self, timeout: float = 60) -> tuple[int, int]:
        """Broadcast warm-ups until every open client got one: (clients that did, clients open)."""
        assert self.pool is not None and self.publisher is not None
        self.pool.ask("warm_reset", "warm_reset")
        deadline = time.monotonic() + timeout
        while True:
            self.publisher.call(10, cmd="warmup")
            time.sleep(0.3)
            replies = self.pool.ask("warm", "warm_check")
            warm, live = sum(r[1] for r in replies), sum(r[2] for r in replies)
            if warm >= live or time.monotonic() > deadline:
                time.sleep(0.3)  # the last warm-up frames drain
                return warm, live

    def cpu_groups(self) -> dict[str, list[int]]:
        assert self.server is not None and self.redis is not None and self.publisher is not None and self.pool is not None
        groups = {
            "server": self.server.pids(),
            "redis": [self.redis.pid],
            "publisher": [self.publisher.pid],
            "self": [os.getpid()],
        }
        for i, pid in enumerate(self.pool.pids()):
            groups[f"client{i}"] = [pid]
        return groups

    def findings(self) -> list[str]:
        return log_findings(self.server.log_text()) if self.server is not None else []


def client_shares(window: CpuWindow) -> list[float]:
    return [window.share(v) for k, v in sorted(window.delta.items()) if k.startswith("client")]


def run_fanout(env: EnvInfo, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Scenario (a)/(b): the clients stay; one phase per publish rate."""
    out: dict[str, Any] = {"phases": {}, "notes": []}
    with Stack(env, run_dir, args.clients, args.procs) as stack:
        assert stack.pool is not None and stack.publisher is not None
        opened = stack.pool.open(args.clients, args.concurrency, 120 + args.clients / 20)
        time.sleep(1.0)
        warm, live = stack.warm_all()
        out["opened"], out["held"] = opened["opened"], live
        if opened["errors"]:
            out["notes"].append(f"handshakes failed: {opened['errors']}")
        if warm < live:
            out["notes"].append(f"only {warm} of {live} open clients received the warm-up broadcast")
        for phase, rate in enumerate(args.rates, start=1):
            messages = max(10, round(rate * args.seconds))
            live, _ = stack.pool.status()
            stack.pool.ask("expecting", "expect", phase, messages)
            window = CpuWindow(stack.cpu_groups()).start()
            publish_timeout = messages / rate + 60
            sent = stack.publisher.call(publish_timeout, cmd="run", phase=phase, messages=messages, rate=rate)
            progress = [0] * len(stack.pool.conns)
            last_change = [time.monotonic()]

            def on_reply(
                index: int, reply: tuple, progress: list[int] = progress, last_change: list[float] = last_change
            ) -> None:
                if reply[0] == "progress" and reply[1] != progress[index]:
                    progress[index] = reply[1]
                    last_change[0] = time.monotonic()

            cutoff = time.monotonic() + args.drain
            timed_out = False
            while True:
                try:
                    stack.pool.collect("done", 1.0, on_reply)
                    break
                except TimeoutError:
                    if time.monotonic() - last_change[0] >= IDLE_TIMEOUT or time.monotonic() > cutoff:
                        timed_out = True
                        stack.pool.send("stop")
                        stack.pool.collect("done", 30, on_reply)
                        break
            window.stop()
            results = [r[1] for r in stack.pool.ask("results", "results", timeout=120)]
            latencies: list[int] = []
            for result in results:
                chunk = array("q")
                chunk.frombytes(result["latencies"])
                latencies.extend(chunk)
            latencies.sort()
            received = sum(r["received"] for r in results)
            expected = live * messages
            last_receive = max(r["last_receive_ns"] for r in results)
            span = (last_receive - sent["first_ns"]) / 1e9 if received else float("nan")
            closed: dict[str, int] = {}
            for result in results:
                for key, value in result["closed"].items():
                    closed[key] = closed.get(key, 0) + value
            out["phases"][rate] = {
                "clients": live,
                "messages": messages,
                "expected": expected,
                "received": received,
                "lost": expected - received,
                "duplicates": sum(r["duplicates"] for r in results),
                "out_of_order": sum(r["out_of_order"] for r in results),
                "stale": sum(r["stale"] for r in results),
                "rate": received / span if received else 0.0,
                "p50": percentile(latencies, 50) / 1e6,
                "p99": percentile(latencies, 99) / 1e6,
                "max": percentile(latencies, 100) / 1e6,
                "publish_s": (sent["last_ns"] - sent["first_ns"]) / 1e9,
                "receivers": sent["receivers"],
                "timed_out": timed_out,
                "closed": closed,
                "window": window,
            }
        out["notes"].extend(stack.findings())
    return out


def run_idle(env: EnvInfo, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Scenario (c): many idle websockets; memory per connection, and how many the server keeps."""
    out: dict[str, Any] = {"notes": []}
    with Stack(env, run_dir, args.idle, args.procs) as stack:
        assert stack.pool is not None and stack.server is not None and stack.redis is not None
        rss_before, redis_before, fds_before = stack.server.rss_kib(), proc_rss_kib(stack.redis.pid), stack.server.fds()
        opened = stack.pool.open(args.idle, args.concurrency, 120 + args.idle / 20)
        time.sleep(2.0)
        held, codes = stack.pool.status()
        warm, live = stack.warm_all(timeout=20)
        time.sleep(1.0)
        rss_after, redis_after, fds_after = stack.server.rss_kib(), proc_rss_kib(stack.redis.pid), stack.server.fds()
        redis_clients = stack.redis.clients()
        out.update(
            redis_clients=redis_clients,
            requested=args.idle,
            opened=opened["opened"],
            errors=opened["errors"],
            open_s=opened["seconds"],
            held=held,
            closed_codes=codes,
            live=warm,
            rss_before=rss_before,
            rss_after=rss_after,
            per_conn=(rss_after - rss_before) / held if held else float("nan"),
            redis_per_conn=(redis_after - redis_before) / held if held else float("nan"),
            fds_before=fds_before,
            fds_after=fds_after,
        )
        if live != held:
            out["notes"].append(f"{held - live} more closed while the harness checked the others with a broadcast")
        out["notes"].extend(stack.findings())
    return out


def run_burst(env: EnvInfo, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Scenario (d): open a burst of websockets as fast as the client can; handshakes per second and their CPU.

    Twice: anonymous clients (no cookie), then logged-in clients, each with the
    session cookie of a different user, so every handshake looks up a session
    and a user in the database (SQLite, in the server's process).
    """
    return {mode: _burst(env, args, run_dir, users) for mode, users in (("anonymous", 0), ("logged in", args.burst))}


def _burst(env: EnvInfo, args: argparse.Namespace, run_dir: Path, users: int) -> dict[str, Any]:
    out: dict[str, Any] = {"notes": []}
    with Stack(env, run_dir, args.burst, args.procs, users=users) as stack:
        assert stack.pool is not None
        window = CpuWindow(stack.cpu_groups()).start()
        opened = stack.pool.open(args.burst, args.burst_concurrency, 120 + args.burst / 20, stack.cookies or None)
        time.sleep(0.5)  # work the server does right after a handshake (ws4redis 0.6 subscribes then)
        window.stop()
        time.sleep(1.0)
        held, codes = stack.pool.status()
        out.update(
            requested=args.burst,
            opened=opened["opened"],
            errors=opened["errors"],
            seconds=opened["seconds"],
            rate=opened["opened"] / opened["seconds"] if opened["opened"] else 0.0,
            held=held,
            closed_codes=codes,
            window=window,
        )
        out["notes"].extend(stack.findings())
    return out


# -- the tables -------------------------------------------------------------------------------------


def fmt_num(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float, base: float | None) -> str:
    if base is None or base != base or value != value or base == 0:
        return ""
    return f"({value / base:.2f}x)"


def with_ratio(value: float, base: float | None, digits: int = 0) -> str:
    ratio = fmt_ratio(value, base)
    return f"{fmt_num(value, digits)} {ratio}".strip()


def pct(share: float) -> str:
    return "-" if share != share else f"{100 * share:.0f}%"


def print_table(title: str, headers: list[str], rows: list[list[str]], notes: list[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    print()
    print(title)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i >= 2 or c[:1].isdigit() else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(line)
    for note in notes:
        print(f"note: {note}")
    sys.stdout.flush()


def loadgen(window: CpuWindow) -> str:
    clients = " ".join(pct(s) for s in client_shares(window))
    return f"{clients} | pub {pct(window.share(window.delta['publisher']))}"


def saturation_notes(name: str, window: CpuWindow, what: str) -> list[str]:
    notes = []
    busiest = max(client_shares(window), default=0.0)
    if busiest > 0.8:
        notes.append(
            f"{name} {what}: a client process was busy {100 * busiest:.0f}% of a core: the load generator limits the figure"
        )
    total = (sum(window.delta.values()) + window.others) / window.wall if window.wall else 0.0
    if total > 0.9 * (os.cpu_count() or 1):
        notes.append(f"{name} {what}: the machine was saturated ({total:.2f} of {os.cpu_count()} CPUs busy)")
    return notes


def table_fanout(results: dict[str, Any], args: argparse.Namespace) -> None:
    base = results.get(BASELINE) if isinstance(results.get(BASELINE), dict) else None
    rows_a: list[list[str]] = []
    rows_b: list[list[str]] = []
    notes_a: list[str] = []
    notes_b: list[str] = []
    for rate in args.rates:
        b = base["phases"].get(rate) if base else None
        for name, res in results.items():
            if not isinstance(res, dict):
                rows_a.append([f"{rate:g}", name, str(res), *[""] * 7])
                rows_b.append([f"{rate:g}", name, str(res), *[""] * 5])
                continue
            p = res["phases"].get(rate)
            if p is None:
                rows_a.append([f"{rate:g}", name, "no phase", *[""] * 7])
                rows_b.append([f"{rate:g}", name, "no phase", *[""] * 5])
                continue
            w: CpuWindow = p["window"]
            rows_a.append(
                [
                    f"{rate:g}",
                    name,
                    f"{p['clients']}/{args.clients}",
                    with_ratio(p["rate"], b and b["rate"]),
                    f"{p['lost']:,}" + (f" of {p['expected']:,}" if p["lost"] else ""),
                    with_ratio(p["p50"], b and b["p50"], 1),
                    with_ratio(p["p99"], b and b["p99"], 1),
                    pct(w.share(w.delta["server"])),
                    pct(w.share(w.delta["redis"])),
                    loadgen(w),
                ]
            )

            def per(seconds: float, p: dict[str, Any] = p) -> float:
                return 1e6 * seconds / p["received"] if p["received"] else float("nan")

            def bper(seconds: float, b: dict[str, Any] | None = b) -> float:
                return 1e6 * seconds / b["received"] if b and b["received"] else float("nan")

            load = w.delta["publisher"] + w.delta["self"] + sum(v for k, v in w.delta.items() if k.startswith("client"))
            rows_b.append(
                [
                    f"{rate:g}",
                    name,
                    with_ratio(per(w.delta["server"]), b and bper(b["window"].delta["server"]), 1),
                    with_ratio(per(w.delta["redis"]), b and bper(b["window"].delta["redis"]), 1),
                    with_ratio(
                        per(w.delta["server"] + w.delta["redis"]),
                        b and bper(b["window"].delta["server"] + b["window"].delta["redis"]),
                        1,
                    ),
                    f"{w.delta['server']:.2f} s / {w.wall:.1f} s",
                    fmt_num(per(load), 1),
                    f"{p['received']:,}",
                ]
            )
            extra = []
            if p["timed_out"]:
                extra.append(f"stopped waiting {args.drain:.0f}s after publishing or {IDLE_TIMEOUT:.0f}s without a delivery")
            if p["closed"]:
                extra.append(f"websockets closed during the phase, by close code: {p['closed']}")
            if p["duplicates"] or p["out_of_order"]:
                extra.append(f"{p['duplicates']} duplicate and {p['out_of_order']} out-of-order deliveries")
            if p["stale"]:
                extra.append(f"{p['stale']} late deliveries of an earlier phase")
            if p["receivers"]:
                extra.append(f"Redis receivers per PUBLISH: {', '.join(map(str, p['receivers'][:3]))}")
            notes_a.extend(f"{name} @ {rate:g}/s: {e}" for e in extra)
            notes_a.extend(saturation_notes(name, w, f"@ {rate:g}/s"))
    for name, res in results.items():
        if isinstance(res, dict):
            if res["held"] < args.clients:
                notes_a.append(f"{name}: held {res['held']} of {args.clients} clients ({res['opened']} handshakes succeeded)")
            notes_a.extend(f"{name}: {n}" for n in res["notes"])
    print_table(
        f"(a) broadcast fan-out to {args.clients:,} clients, {args.seconds:g} s of publishing per rate "
        "(ratio: peer / ws4redis_uwsgi)",
        [
            "msg/s",
            "peer",
            "clients",
            "deliveries/s",
            "lost",
            "p50 ms",
            "p99 ms",
            "server CPU",
            "redis CPU",
            "load gen CPU (clients | pub)",
        ],
        rows_a,
        notes_a,
    )
    notes_b.append("server: uWSGI master + worker, or the daphne process; utime+stime from /proc over the phase")
    print_table(
        "(b) CPU per delivered message, same phases (microseconds; ratio: peer / ws4redis_uwsgi)",
        ["msg/s", "peer", "server us", "redis us", "server+redis us", "server CPU / wall", "load gen us", "deliveries"],
        rows_b,
        notes_b,
    )


def table_idle(results: dict[str, Any], args: argparse.Namespace) -> None:
    base = results.get(BASELINE) if isinstance(results.get(BASELINE), dict) else None
    rows, notes = [], []
    for name, res in results.items():
        if not isinstance(res, dict):
            rows.append([name, str(res), *[""] * 8])
            continue
        rows.append(
            [
                name,
                f"{res['opened']:,}/{res['requested']:,}",
                f"{res['held']:,}",
                f"{res['live']:,}",
                f"{res['rss_before'] / 1024:.1f} -> {res['rss_after'] / 1024:.1f}",
                with_ratio(res["per_conn"], base and base["per_conn"], 1),
                f"{res['redis_clients']:,}",
                fmt_num(res["redis_per_conn"], 1),
                f"{res['fds_before']:,} -> {res['fds_after']:,}",
                fmt_num(res["open_s"], 1),
            ]
        )
        if res["errors"]:
            notes.append(f"{name}: handshakes failed: {res['errors']}")
        if res["closed_codes"]:
            notes.append(f"{name}: closed by the server after the handshake, by close code: {res['closed_codes']}")
        notes.extend(f"{name}: {n}" for n in res["notes"])
    notes.append("redis conns: connections Redis holds with the websockets open, the publisher's included")
    print_table(
        f"(c) {args.idle:,} idle connections (ratio: peer / ws4redis_uwsgi)",
        [
            "peer",
            "opened",
            "held 2 s later",
            "got a broadcast",
            "server RSS MiB",
            "KiB/conn",
            "redis conns",
            "redis KiB/conn",
            "server fds",
            "open s",
        ],
        rows,
        notes,
    )


def table_burst(results: dict[str, Any], args: argparse.Namespace) -> None:
    rows, notes = [], []
    for mode in ("anonymous", "logged in"):
        base = results.get(BASELINE)
        base = base.get(mode) if isinstance(base, dict) else None
        for name, by_mode in results.items():
            res = by_mode.get(mode) if isinstance(by_mode, dict) else by_mode
            if not isinstance(res, dict):
                rows.append([mode, name, str(res), *[""] * 6])
                continue
            w: CpuWindow = res["window"]
            bw: CpuWindow | None = base["window"] if base else None

            def per(seconds: float, opened: int) -> float:
                return 1e6 * seconds / opened if opened else float("nan")

            rows.append(
                [
                    mode,
                    name,
                    f"{res['opened']:,}/{res['requested']:,}",
                    with_ratio(res["rate"], base and base["rate"]),
                    with_ratio(per(w.delta["server"], res["opened"]), bw and per(bw.delta["server"], base["opened"])),
                    fmt_num(per(w.delta["redis"], res["opened"])),
                    f"{res['held']:,}",
                    pct(w.share(w.delta["server"])),
                    loadgen(w),
                ]
            )
            label = f"{name} ({mode})"
            if res["errors"]:
                notes.append(f"{label}: handshakes failed: {res['errors']}")
            if res["closed_codes"]:
                notes.append(f"{label}: closed by the server after the handshake, by close code: {res['closed_codes']}")
            notes.extend(saturation_notes(label, w, "burst"))
            notes.extend(f"{label}: {n}" for n in res["notes"])
    notes.append(
        "logged in: a session cookie of a different user per client; sessions and users in SQLite (Django's db sessions)"
    )
    print_table(
        f"(d) {args.burst:,} connections opened as fast as the client can, {args.burst_concurrency} handshakes in flight "
        "(ratio: peer / ws4redis_uwsgi)",
        [
            "clients",
            "peer",
            "opened",
            "handshakes/s",
            "server us/handshake",
            "redis us/hs",
            "held 1 s later",
            "server CPU",
            "load gen CPU (clients | pub)",
        ],
        rows,
        notes,
    )


# -- main -------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(args.idle, args.burst, args.clients) // args.procs + 1000
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        print(f"warning: the open-files limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[0]}) is below {needed}")

    specs = [p for p in PEERS if p.name in args.peers]
    print(
        f"peers benchmark on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, " + ("--quick" if args.quick else "full run")
    )
    print("environments (bench/.envs/):")
    envs: list[EnvInfo] = []
    for spec in specs:
        info = build_env(spec, args.rebuild, lambda text: print(f"  {text}", flush=True))
        envs.append(info)
        state = info.error or ("built" if info.built else "reused")
        print(f"  {spec.name:<15} {state}")
        if info.versions:
            print("  " + " " * 16 + ", ".join(f"{k} {v}" for k, v in info.versions.items()))
    print(
        f"load generator: {args.procs} client processes (Python {sys.version.split()[0]}, bench/wsclient.py on {loop_name()}), "
        f"Origin {ORIGIN}; publisher: a helper process in each peer's environment",
        flush=True,
    )

    run_dir = Path(tempfile.mkdtemp(prefix="ws4redis-peers-"))
    keep = args.keep
    problems: list[str] = []  # what makes the exit status 1: ws4redis_uwsgi failing or losing messages
    scenarios: list[tuple[str, Callable[..., dict[str, Any]], Callable[..., None]]] = [
        ("a", run_fanout, table_fanout),
        ("c", run_idle, table_idle),
        ("d", run_burst, table_burst),
    ]
    try:
        for key, runner, table in scenarios:
            if key not in args.scenarios:
                continue
            results: dict[str, Any] = {}
            for info in envs:
                if info.error:
                    results[info.spec.name] = info.error
                    continue
                print(f"[{time.monotonic() - started:5.0f}s] ({key}) {info.spec.name} ...", flush=True)
                try:
                    results[info.spec.name] = runner(info, args, run_dir)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    keep = True
                    results[info.spec.name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            table(results, args)
            problems.extend(baseline_problems(key, results.get(BASELINE)))
    finally:
        stop_all_live()
        if keep:
            print(f"\nlogs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def baseline_problems(scenario: str, result: Any) -> list[str]:
    """Why ws4redis_uwsgi's run of a scenario counts as failed: an error, or a message lost or repeated."""
    if result is None:
        return []
    if not isinstance(result, dict):
        return [f"({scenario}) {BASELINE}: {result}"]
    problems = []
    for rate, phase in result.get("phases", {}).items():
        if phase["lost"] or phase["duplicates"] or phase["out_of_order"]:
            problems.append(
                f"(a) {BASELINE} at {rate:g} msg/s: {phase['lost']} lost, {phase['duplicates']} repeated, "
                f"{phase['out_of_order']} out of order"
            )
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run: 300 clients, 2,000 idle, 500 in the burst, 2 s per rate"
    )
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS), help="comma-separated peers (default: all three)")
    parser.add_argument("--scenarios", default="a,c,d", help="comma-separated among a (with b), c, d (default: all)")
    parser.add_argument("--clients", type=int, help="fan-out clients (default 1,000; quick 300)")
    parser.add_argument("--rates", help="publish rates in msg/s, comma-separated (default 10,50,100,200)")
    parser.add_argument("--seconds", type=float, help="seconds of publishing per rate (default 4; quick 2)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for deliveries after publishing (default 30)")
    parser.add_argument("--idle", type=int, help="idle connections (default 10,000; quick 2,000)")
    parser.add_argument("--burst", type=int, help="connections in the handshake burst (default 2,000; quick 500)")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight while opening clients (default 200)")
    parser.add_argument(
        "--burst-concurrency",
        type=int,
        default=500,
        help="handshakes in flight in the burst (default 500, under the backlog of 1024)",
    )
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--rebuild", action="store_true", help="recreate the environments under bench/.envs")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    parser.add_argument("--publisher", choices=("redis", "channels"), help=argparse.SUPPRESS)
    parser.add_argument("--make-sessions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher or args.make_sessions:
        return args
    args.clients = args.clients or (300 if args.quick else 1000)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    args.idle = args.idle or (2000 if args.quick else 10000)
    args.burst = args.burst or (500 if args.quick else 2000)
    args.rates = [float(r) for r in (args.rates or "10,50,100,200").split(",")]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.scenarios = {s.strip() for s in args.scenarios.split(",")}
    unknown = set(args.peers) - {p.name for p in PEERS}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    if min(args.clients, args.idle, args.burst, args.procs) < 1 or min(args.rates) <= 0:
        parser.error("counts and rates must be positive")
    return args


def loop_name() -> str:
    """The event loop the client processes run on: uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if args.publisher:
        return publisher_main(args.publisher)
    if args.make_sessions:
        return make_sessions_main(args.make_sessions)
    atexit.register(stop_all_live)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every server", file=sys.stderr)
        stop_all_live()
        return 130


if __name__ == "__main__":
    sys.exit(main())
