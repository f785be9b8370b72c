"""The systems under comparison, each in a virtual environment and with a redis-server of its own.

* **ws4redis_uwsgi** from this checkout (``pip install -e``), one uWSGI
  websocket worker under gevent, ``ws4redis_uwsgi.wsgi_websocket:application``,
  settings ``bench/peersite/settings_ws4redis_uwsgi.py``;
* **ws4redis_uwsgi+metrics**: the same, its worker's metrics endpoint on and
  scraped every second (what metrics cost; the same environment);
* **ws4redis 0.6** (``django-websocket-redis`` 0.6.0 from PyPI), one uWSGI
  worker under gevent, its documented ``wsgi_websocket.py``
  (``bench/peersite/wsgi_ws4redis06.py``); pinned to what it ran on in 2019
  (see ``PEERS``);
* **Channels 4**: one daphne process, ``channels_redis``'s pub/sub layer
  (``RedisPubSubChannelLayer``), a consumer that joins a group on connect
  and forwards ``broadcast.message`` events (``bench/peersite/asgi_channels.py``);
* **bare-hub**, in the fan-out scenario only: the floor of issue 14's fan-out
  goal, a hub that writes each message's frame, built once, to every socket
  and does nothing else, in the same uWSGI + gevent worker
  (``bench/peersite/wsgi_bare_hub.py``; ws4redis_uwsgi's environment).

The environments are built under ``bench/.envs/`` on the first run and reused
afterwards. The publisher is a helper process in the peer's own environment
(``peers.py --publisher``): plain Redis PUBLISH to ``broadcast:bench`` for both
ws4redis peers, ``channel_layer.group_send`` for Channels. A :class:`Stack` is
one peer running for one scenario: redis-server, server, publisher, clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from loadgen import ORIGIN, WARMUP, ClientPool
from processes import Child, clean_env, descendants, free_port, port_open, proc_fds, proc_rss_kib, tail, wait_until

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ENVS = BENCH / ".envs"
#: The helpers that run in a peer's environment are this command line: ``--publisher``, ``--make-sessions``.
PEERS_PY = BENCH / "peers.py"

FACILITY = "bench"
WS_PATH = f"/ws/{FACILITY}?subscribe-broadcast"
#: The logged-in clients also ask for their user's channel and their groups' channels, so both ws4redis
#: peers look the user and the groups up (Channels' consumer joins the same groups: peersite/asgi_channels.py).
WS_PATH_USER = f"/ws/{FACILITY}?subscribe-broadcast&subscribe-user&subscribe-group"
#: Groups of the logged-in scenario: each user is in GROUPS_PER_USER of them.
GROUPS = 10
GROUPS_PER_USER = 2
#: Where both ws4redis peers listen for the facility's broadcasts (no WS4REDIS_PREFIX).
REDIS_CHANNEL = f"broadcast:{FACILITY}"
#: The group every Channels consumer joins (peersite/asgi_channels.py).
CHANNELS_GROUP = FACILITY
#: The listen backlog of every server (uWSGI --listen, daphne's endpoint; Twisted's default is 50).
BACKLOG = 1024
#: Async cores of ws4redis_uwsgi's worker in the idle scenario: handshakes in flight, not websockets.
#: A detached websocket leaves its core after the handshake, and uWSGI touches every core's memory at
#: start-up (about 6 KiB each: 100,000 cores are 600 MiB of RSS before the first client), so for many
#: idle websockets the worker has a few cores and ``WS4REDIS_MAX_CONNECTIONS`` says how many it holds.
IDLE_CORES = 1000
#: Descriptors of a worker besides its websockets and handshakes (ws4redis_uwsgi's FD_RESERVE, and some).
FD_RESERVE = 100

#: The peer every ratio is to, and whose lost, repeated or reordered message fails the run.
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
    env_name: str = ""  # the virtual environment under bench/.envs, when another peer's (default: name)
    metrics: bool = False  # serve WS4REDIS_METRICS_PORT and have it scraped every second meanwhile
    scenarios: str = "acd"  # the scenarios it runs in


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
    # The same, with each worker's metrics endpoint on and scraped every second (Prometheus at
    # its most eager): what the counting and the scraping cost (issue 13: at most 5%).
    PeerSpec(
        name="ws4redis_uwsgi+metrics",
        requirements=("-e", str(REPO)),
        server="uwsgi",
        app="ws4redis_uwsgi.wsgi_websocket:application",
        settings="peersite.settings_ws4redis_uwsgi_metrics",
        publisher="redis",
        dists=("ws4redis-uwsgi", "prometheus-client"),
        env_name="ws4redis_uwsgi",
        metrics=True,
    ),
    # The floor of the fan-out goal (issue 14: "below the bare Python hub"): one frame built per
    # message and written to every socket, nothing else (peersite/wsgi_bare_hub.py). Fan-out only.
    PeerSpec(
        name="bare-hub",
        requirements=("-e", str(REPO)),
        server="uwsgi",
        app="peersite.wsgi_bare_hub:application",
        settings="peersite.settings_ws4redis_uwsgi",
        publisher="redis",
        dists=("uWSGI", "gevent", "redis"),
        env_name="ws4redis_uwsgi",
        scenarios="a",
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


# -- the peers' processes -------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Failure:
    """Why a peer has no figures: what went wrong ("failed", "not installed") and the exception.

    ``str()`` is the full text (a note below the table, the exit status's reason); ``cell()`` the
    short form for the table's cell, so a long message does not widen the table.
    """

    what: str
    error: str  # the exception's type
    message: str

    #: How much of the message a table cell shows.
    CELL_CHARS: ClassVar[int] = 40

    @classmethod
    def of(cls, what: str, exc: BaseException) -> Failure:
        return cls(what, type(exc).__name__, str(exc))

    def __str__(self) -> str:
        return f"{self.what}: {self.error}: {self.message}"

    def cell(self) -> str:
        message = " ".join(self.message.split())  # no line breaks in a cell
        if len(message) > self.CELL_CHARS:
            message = message[: self.CELL_CHARS].rstrip() + "..."
        return f"{self.what}: {self.error}: {message}"


@dataclass
class EnvInfo:
    spec: PeerSpec
    path: Path
    python: Path
    versions: dict[str, str] = field(default_factory=dict)
    error: Failure | None = None
    built: bool = False


def hard_open_files() -> int:
    """The hard limit on open files of this process and its children (what ``ulimit -Hn`` says)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


class Server(Child):
    """The peer's websocket server: one uWSGI worker (plus its master), or one daphne process."""

    def __init__(
        self,
        env: EnvInfo,
        workdir: Path,
        redis_port: int,
        cores: int,
        db: Path | None = None,
        held: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``held``: the idle scenario's websockets; the server is then set up for that many (:meth:`idle_settings`)."""
        self.env = env
        self.db = db
        #: More uWSGI options, after the common ones (a later option of the same name wins).
        self.extra = extra
        self.spec = env.spec
        self.workdir = workdir
        self.redis_port = redis_port
        self.cores = cores
        self.held = held
        self.port = free_port()
        #: uWSGI's max-fd: what the server may need, at most the hard limit (uWSGI cannot raise that).
        self.max_fd = 20000

    def detaches(self) -> bool:
        """Whether this is ws4redis_uwsgi, whose websockets leave their uWSGI request and core after the handshake."""
        return self.spec.app.startswith("ws4redis_uwsgi.")

    def idle_settings(self) -> tuple[int, int | None, int]:
        """Async cores, WS4REDIS_MAX_CONNECTIONS (None: the default) and max-fd, as a user sets them for ``held`` websockets.

        ws4redis_uwsgi: :data:`IDLE_CORES` cores, ``held`` connections (plus the harness's own), and a
        descriptor per websocket, two per handshake in flight and a reserve; ws4redis 0.6 keeps a core per
        websocket, and a descriptor for its Redis connection besides. Never more than the hard limit.
        """
        if self.held is None:
            return self.cores, None, 20000
        if self.detaches():
            cores, limit = min(self.cores, IDLE_CORES), self.held + 100
            needed = limit + 2 * cores + FD_RESERVE
        else:
            cores, limit = self.cores, None
            needed = 3 * cores + FD_RESERVE
        return cores, limit, min(max(20000, needed), hard_open_files())

    def url(self, path: str = WS_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60) -> Server:
        bindir = self.env.path / "bin"
        env = clean_env(BENCH_REDIS_PORT=str(self.redis_port), DJANGO_SETTINGS_MODULE=self.spec.settings)
        if self.db is not None:
            env["BENCH_DB"] = str(self.db)
        if self.spec.metrics:
            self.metrics_port = free_port()
            env["BENCH_METRICS_PORT"] = str(self.metrics_port)
        if self.spec.server == "uwsgi":
            cores, limit, self.max_fd = self.idle_settings()
            if limit is not None:
                env["BENCH_MAX_CONNECTIONS"] = str(limit)
            # The options of tests/servers.py: one worker, gevent, HTTP straight into the worker.
            cmd = [str(bindir / "uwsgi"), "--http-socket", f"127.0.0.1:{self.port}", "--http-websockets"]
            cmd += ["--gevent", str(cores), "--master", "--workers", "1", "--module", self.spec.app]
            cmd += ["--virtualenv", str(self.env.path), "--pythonpath", str(BENCH), "--listen", str(BACKLOG)]
            cmd += ["--die-on-term", "--buffer-size", "8192", "--need-app", "--disable-logging", "--max-fd", str(self.max_fd)]
            cmd += self.extra
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
        if self.spec.metrics:
            threading.Thread(target=self._scrape, name="scraper", daemon=True).start()
        return self

    def _scrape(self) -> None:
        """GET /metrics every second while the server lives (its answers are counted in ``scrapes``)."""
        self.scrapes = 0
        while self.alive():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                    if response.status == 200 and b"ws4redis_deliveries_total" in response.read():
                        self.scrapes += 1
            except OSError:
                pass
            time.sleep(1.0)

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
    path = ENVS / (spec.env_name or spec.name)
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
        info.error = Failure.of("not installed", exc)
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

    return serve_publishes(publish)


def serve_publishes(publish: Callable[[str], int | None], failures: list[str] | None = None) -> int:
    """The publisher helper's loop: ``ready``, then a JSON reply on stdout to each command on stdin (``warmup``, ``run``).

    ``publish`` sends one message and returns the receivers Redis counted (or None). With ``failures``, the
    list where ``publish`` records the errors it caught, each ``run`` reply also has ``failed`` (how many
    in that run) and ``failure`` (the first).
    """

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
            if failures is not None:
                failures.clear()
            first = time.monotonic_ns()
            for seq in range(messages):
                if interval:
                    delay = first + seq * interval - time.monotonic_ns()
                    if delay > 0:
                        time.sleep(delay / 1e9)
                receivers.add(publish(f'{{"p":{phase},"seq":{seq},"t":{time.monotonic_ns()}}}'))
            done: dict[str, Any] = {
                "first_ns": first,
                "last_ns": time.monotonic_ns(),
                "receivers": sorted(r for r in receivers if r is not None),
            }
            if failures is not None:
                done.update(failed=len(failures), failure=failures[0] if failures else None)
            reply(done)
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
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.core.management import call_command
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    password = make_password("bench")
    user_model.objects.bulk_create([user_model(username=f"user{i}", password=password) for i in range(count)])
    Group.objects.bulk_create([Group(name=f"group{g}") for g in range(GROUPS)])
    groups = list(Group.objects.order_by("pk"))  # (Django 2.2 sets no primary keys in bulk_create on SQLite)
    membership = user_model.groups.through
    membership.objects.bulk_create(
        [
            membership(user_id=pk, group_id=groups[(n + k) % GROUPS].pk)
            for n, pk in enumerate(user_model.objects.order_by("pk").values_list("pk", flat=True))
            for k in range(GROUPS_PER_USER)
        ]
    )
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
        cmd = [str(env.python), str(PEERS_PY), "--publisher", env.spec.publisher]
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


# -- one peer for one scenario --------------------------------------------------------------------


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


def warm_all(pool: ClientPool, publisher: Publisher, timeout: float = 60) -> tuple[int, int]:
    """Broadcast warm-ups until every open client got one: (clients that did, clients open)."""
    pool.ask("warm_reset", "warm_reset")
    deadline = time.monotonic() + timeout
    while True:
        publisher.call(10, cmd="warmup")
        time.sleep(0.3)
        replies = pool.ask("warm", "warm_check")
        warm, live = sum(r[1] for r in replies), sum(r[2] for r in replies)
        if warm >= live or time.monotonic() > deadline:
            time.sleep(0.3)  # the last warm-up frames drain
            return warm, live


def make_claims_main() -> int:
    """``peers.py --make-claims`` (ws4redis_uwsgi's environment, ``BENCH_DB`` set): cookies on stdin, with claims on stdout.

    What each user's page gives the browser before its websocket opens: the
    pages' side of :mod:`ws4redis_uwsgi.django.identity_claim` (its
    middleware's ``issue``) for a request of that session, as the pages
    vassal runs it; its CPU is the pages', not the websocket worker's.
    """
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpRequest, HttpResponse

    from ws4redis_uwsgi.django.identity_claim import COOKIE_NAME, issue

    cookies = []
    for cookie in json.load(sys.stdin):
        request = HttpRequest()
        request.session = SessionStore(cookie.partition("=")[2])
        request.user = get_user(request)
        response = HttpResponse("<p>a page</p>")
        issue(request, response, time.time())
        claim = response.cookies.get(COOKIE_NAME)
        if claim is None or request.session.session_key is None:
            raise RuntimeError(f"no claim for the session of {cookie} ({settings.SESSION_ENGINE})")
        cookies.append(f"{cookie}; {COOKIE_NAME}={claim.value}")
    print(json.dumps(cookies))
    return 0


class Stack:
    """redis-server, the peer's server, its publisher and the client pool, for one scenario."""

    def __init__(
        self, env: EnvInfo, run_dir: Path, clients: int, procs: int, users: int = 0, idle: bool = False, claims: bool = False
    ) -> None:
        """``idle``: the server is set up to hold ``clients`` idle websockets (:meth:`Server.idle_settings`).

        ``claims``: the users' cookies carry the identity claims their pages gave them (ws4redis_uwsgi only).
        """
        self.env = env
        self.idle = idle
        self.claims = claims
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
            self.server = Server(
                self.env, self.workdir, self.redis.port, uwsgi_cores(self.clients), db, self.clients if self.idle else None
            ).start()
            self.publisher = Publisher(self.env, self.workdir, self.redis.port)
            self.warm_single()
            if self.claims:
                assert db is not None
                self.make_claims(db)
            self.pool = ClientPool([self.server.url(WS_PATH_USER if self.users else WS_PATH)] * self.procs)
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
        cmd = [str(self.env.python), str(PEERS_PY), "--make-sessions", str(self.users)]
        done = subprocess.run(cmd, env=env, cwd=self.workdir, capture_output=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"--make-sessions failed: {done.stderr.decode(errors='replace')[-400:]}")
        self.cookies = json.loads(done.stdout)
        return db

    def make_claims(self, db: Path) -> None:
        """The users' pages, loaded now that the worker hears live authorization: their claims join the cookies.

        A worker takes only claims made a second (the clocks' margin) after it
        started hearing, which it did before the warm-up's websocket opened.
        """
        time.sleep(1.5)  # the clocks' margin (identity_claim.CLOCK_MARGIN), and some
        env = clean_env(DJANGO_SETTINGS_MODULE=self.env.spec.settings, BENCH_DB=str(db), PYTHONPATH=str(BENCH))
        cmd = [str(self.env.python), str(PEERS_PY), "--make-claims"]
        done = subprocess.run(
            cmd, env=env, cwd=self.workdir, input=json.dumps(self.cookies).encode(), capture_output=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"--make-claims failed: {done.stderr.decode(errors='replace')[-400:]}")
        self.cookies = json.loads(done.stdout)

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
        assert self.pool is not None and self.publisher is not None
        return warm_all(self.pool, self.publisher, timeout)

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
