"""Reconnect storm: thousands of resuming clients of a worker that restarts, back and caught up in seconds.

    .venv/bin/python bench/storm.py [--clients 10000] [--rate 1] [--phases crash,reload] [--goal 10]

The goal (SPEC section 6): 10,000 resuming clients of a restarted worker all
back and caught up within 10 seconds, nothing lost, Redis connections flat,
no handshake refused except with 503 and Retry-After.

What runs: a redis-server of its own and one ws4redis_uwsgi websocket worker
under uWSGI + gevent with its master (``systems.Server``, this checkout,
history on as by default), a publisher thread here that broadcasts numbered
messages through ``RedisPublisher`` at a steady rate for the whole run, and
client processes (``--procs``) of the lean client of ``wsclient.py``, each
client behaving as ``ws4redis.js`` with ``resume: true``:

* every frame is ``<token>\\n<payload>``; the client keeps the last token and
  reconnects with ``resume=<token>`` (``!gap`` and other ``!`` notices are
  counted, not messages);
* after any close, and after every failed attempt, it waits
  ``backoff_delay(attempt)`` (ported from ws4redis.js: 500 ms doubled per
  attempt, capped at 30 s, equal jitter) and tries again; the attempt count
  restarts once a connection opens. After a 1012 whose reason says
  "retry in <ms> ms" (a reloading worker spreads its clients' return), the
  first wait is that much longer, as in ws4redis.js. A browser's WebSocket cannot see an HTTP
  status or Retry-After, so neither does this client: a 503 is a failed
  attempt like any other (it is counted by status, with or without
  Retry-After).

A worker "restarted", as an operator meets it, is one of two things, run as
two phases one after the other:

* ``crash``: the worker process is killed with SIGKILL (an OOM kill, a
  segfault) and the uWSGI master forks a new one; the clients see their
  connections drop without a close frame (1006). The listening socket is
  the master's, so handshakes meanwhile wait in the kernel's accept queue;
* ``reload``: SIGHUP to the master (``uwsgi --reload``, a deploy): the worker
  closes every websocket with 1012 and exits, the master re-executes itself
  (the listening socket survives) and starts a fresh worker that loads the
  application anew.

Per phase: the time from the signal until every client is open again, and
until every client is *caught up*: open again and holding every message
published before it reopened, which is the first message it receives that
was published after its reopening (its payload carries the publish time;
the sequence numbers show that nothing before it is missing). Every client
checks the sequence of what it receives for the whole run: a message
skipped (lost), repeated or out of order fails the run. Also per phase: the
handshake attempts and the refusals by kind, the close codes, the worker's
CPU (uWSGI master and workers, from /proc) until everyone caught up, and
Redis's ``connected_clients`` (sampled every 100 ms) before the clients
connect, with them all connected, the peak during the storm and after.

Exit status 1 when a message was lost, repeated or reordered, when a
handshake was refused other than with 503 and Retry-After, when a client did
not come back within ``--timeout``, or when Redis's connections exceeded what
one worker holds whatever its clients (its command pool and pub/sub
connection) twice over, plus the publisher's; 2 when only the time goal (``--goal``) was missed; else 0.

The rate is low on purpose (1 message/s to 10,000 resuming clients is 10,000
deliveries/s): a resuming client's frame carries its own token, about 20 µs
of worker CPU per delivery on the 2-core machine of bench/README.md, so 5/s
to 10,000 clients is a whole core before any handshake, and 20-50/s would
measure fan-out, not the storm. A handshake the client gave up on after
``HANDSHAKE_TIMEOUT`` is counted apart ("timed out"): the server did not
refuse it, it was too slow, which the time goal already reports.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import multiprocessing
import os
import random
import re
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

FACILITY = "storm"
WS_PATH = f"/ws/{FACILITY}?subscribe-broadcast"
ORIGIN = "http://127.0.0.1"

# -- ws4redis.js's backoff, ported --------------------------------------------------------------

#: As in ws4redis.js (BACKOFF_BASE_MS, BACKOFF_CAP_MS).
BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 30000


def backoff_delay(attempt: int, rand: float | None = None) -> float:
    """Milliseconds before reconnection attempt number ``attempt``: ws4redis.js's ``backoff_delay``, line for line.

    The ceiling is 500 ms doubled per attempt and capped at 30 s; the delay is
    drawn uniformly between half the ceiling and the ceiling ("equal jitter").
    """
    n = math.floor(attempt) if attempt >= 1 else 1
    ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** min(n - 1, 30))
    r = random.random() if rand is None else min(max(rand, 0.0), 1.0)
    return ceiling * (0.5 + 0.5 * r)


#: As in ws4redis.js (MAX_RETRY_HINT_MS).
MAX_RETRY_HINT_MS = 60000


def retry_hint_ms(code: int | None, reason: str) -> float:
    """Milliseconds a server restart's close asks for before the first reconnection: ws4redis.js's ``retry_hint_ms``."""
    if code != 1012:
        return 0
    found = re.search(r"retry in (\d{1,6}) ms", reason)
    return min(int(found.group(1)), MAX_RETRY_HINT_MS) if found else 0


# -- the client processes -----------------------------------------------------------------------

#: How long one handshake may take before it counts as a failed attempt (a browser waits longer;
#: a client still waiting after this long has missed the goal anyway).
HANDSHAKE_TIMEOUT = 10.0
#: Handshakes in flight per process while the clients first connect (the storm comes later).
INITIAL_CONCURRENCY = 100


class Client:
    """One resuming client: its position, what it checked, and its times in the current phase."""

    __slots__ = (
        "attempts",
        "caught_up_at",
        "dropped_at",
        "first_seq",
        "gaps",
        "index",
        "last_seq",
        "lost",
        "open",
        "received",
        "reopened_at",
        "repeated",
        "source",
        "token",
        "ws",
    )

    def __init__(self, index: int, source: str) -> None:
        self.index = index
        self.source = source
        self.token = ""
        self.last_seq = -1
        self.first_seq = -1
        self.received = 0
        self.lost = 0  # messages skipped: a sequence number jumped ahead
        self.repeated = 0  # a sequence number at or below the last one (repeated or out of order)
        self.gaps = 0  # !gap notices
        self.attempts = 0
        self.open = False
        self.ws: Any = None
        self.dropped_at = 0  # monotonic ns, in the current phase (0: not yet)
        self.reopened_at = 0
        self.caught_up_at = 0

    def on_message(self, message: bytes) -> None:
        nl = message.find(b"\n")
        header = message[:nl] if nl >= 0 else b""
        if header.startswith(b"!"):
            if header == b"!gap":
                self.gaps += 1
            return
        if header:
            self.token = header.decode("ascii")
        seq_text, _, published_text = message[nl + 1 :].partition(b" ")
        seq = int(seq_text)
        if self.last_seq < 0:
            self.first_seq = seq
        elif seq <= self.last_seq:
            self.repeated += 1
            return
        elif seq > self.last_seq + 1:
            self.lost += seq - self.last_seq - 1
        self.last_seq = seq
        self.received += 1
        if self.reopened_at and not self.caught_up_at and int(published_text) >= self.reopened_at:
            # Published after this connection opened: a live message, and everything before it came.
            self.caught_up_at = time.monotonic_ns()


class Phase:
    """What the clients of one process saw in one phase."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts = 0
        self.refused: dict[str, int] = {}
        self.closes: dict[str, int] = {}

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


def client_process(conn: Connection, host: str, port: int, indexes: list[int], sources: list[str]) -> None:
    """One client process: the clients numbered ``indexes``, driven by commands on ``conn``."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_client_main(conn, host, port, indexes, sources))
    conn.close()


def _stormclient_class() -> type:
    """``wsclient.WebsocketClient`` that also keeps the response head of a refused handshake (for Retry-After)."""
    from wsclient import WebsocketClient

    class StormClient(WebsocketClient):  # type: ignore[misc]
        __slots__ = ("head",)

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.head = b""

        def data_received(self, data: bytes) -> None:
            if not self._upgraded:
                self.head += data
            super().data_received(data)

        def _fail(self, error: Any) -> None:
            error.head = self.head  # for the Retry-After of a refusal
            super()._fail(error)

    return StormClient


async def _client_main(conn: Connection, host: str, port: int, indexes: list[int], sources: list[str]) -> None:
    from loadgen import command_queue
    from wsclient import HandshakeError

    storm_client = _stormclient_class()
    loop = asyncio.get_running_loop()
    commands = command_queue(conn)

    clients = [Client(i, sources[i % len(sources)]) for i in indexes]
    phase = Phase("connect")
    stopping = False
    initial = asyncio.Semaphore(INITIAL_CONCURRENCY)

    async def open_ws(c: Client) -> Any:
        key = base64.b64encode(os.urandom(16))
        path = f"{WS_PATH}&resume={quote(c.token, safe='')}"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n"
        ).encode("latin-1")
        ws = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                _, ws = await loop.create_connection(
                    lambda: storm_client(request, key, c.on_message), host, port, local_addr=(c.source, 0)
                )
                await ws.opened
        except BaseException:
            if ws is not None:
                ws.abort()
            raise
        return ws

    def refusal(ws_error: BaseException) -> str:
        if isinstance(ws_error, HandshakeError):
            if ws_error.status == 0:
                return "connection lost"
            head = (getattr(ws_error, "head", b"") or b"").lower()
            with_retry = b"\r\nretry-after:" in head
            return f"{ws_error.status}" + (" with Retry-After" if with_retry else " without Retry-After")
        if isinstance(ws_error, TimeoutError):
            return "timeout"  # the client gave up waiting (HANDSHAKE_TIMEOUT): slow, not refused
        if isinstance(ws_error, ConnectionRefusedError):
            return "connection refused"
        return type(ws_error).__name__

    async def run(c: Client, first: bool) -> None:
        while not stopping:
            phase.attempts += 1
            hint_ms = 0.0
            try:
                if first:
                    async with initial:
                        ws = await open_ws(c)
                else:
                    ws = await open_ws(c)
            except (HandshakeError, OSError, TimeoutError) as exc:
                phase.count(phase.refused, refusal(exc))
            else:
                first = False
                c.ws, c.open, c.attempts = ws, True, 0
                if phase.name != "connect":
                    c.reopened_at = time.monotonic_ns()
                await ws.closed
                c.open, c.ws = False, None
                if stopping:
                    return
                if not c.dropped_at:
                    c.dropped_at = time.monotonic_ns()
                phase.count(phase.closes, str(ws.close_code))
                hint_ms = retry_hint_ms(ws.close_code, ws.close_reason)
            c.attempts += 1
            await asyncio.sleep((backoff_delay(c.attempts) + hint_ms) / 1000)

    tasks: list[asyncio.Task[None]] = []
    phases: list[Phase] = []
    while True:
        command = await commands.get()
        kind = command[0]
        if kind == "start":
            tasks = [asyncio.create_task(run(c, True)) for c in clients]
            conn.send(("started",))
        elif kind == "status":
            conn.send(
                (
                    "status",
                    sum(c.open for c in clients),
                    sum(1 for c in clients if c.caught_up_at),
                    sum(1 for c in clients if c.dropped_at),
                    sum(1 for c in clients if c.last_seq >= 0),
                    min((c.last_seq for c in clients), default=-1),
                )
            )
        elif kind == "phase":
            phases.append(phase)
            phase = Phase(command[1])
            for c in clients:
                c.dropped_at = c.reopened_at = c.caught_up_at = 0
            conn.send(("phase",))
        elif kind == "phase_report":
            conn.send(
                (
                    "phase_report",
                    {
                        "attempts": phase.attempts,
                        "refused": phase.refused,
                        "closes": phase.closes,
                        "dropped": [c.dropped_at for c in clients],
                        "reopened": [c.reopened_at for c in clients],
                        "caught_up": [c.caught_up_at for c in clients],
                    },
                )
            )
        elif kind == "finish":
            final_seq, timeout = command[1], command[2]
            deadline = time.monotonic() + timeout
            while any(c.last_seq < final_seq for c in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stopping = True
            await asyncio.gather(*(c.ws.close(timeout=2) for c in clients if c.ws is not None), return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            phases.append(phase)
            conn.send(
                (
                    "finished",
                    {
                        "lost": sum(c.lost + max(0, final_seq - c.last_seq) for c in clients),
                        "behind": sum(1 for c in clients if c.last_seq < final_seq),
                        "repeated": sum(c.repeated for c in clients),
                        "gaps": sum(c.gaps for c in clients),
                        "received": sum(c.received for c in clients),
                        "expected": sum(final_seq - c.first_seq + 1 for c in clients if c.first_seq >= 0),
                        "never": sum(1 for c in clients if c.first_seq < 0),
                        "connect_refused": phases[0].refused,
                    },
                )
            )
        elif kind == "exit":
            for c in clients:
                if c.ws is not None:
                    c.ws.abort()
            return


class StormPool:
    """The client processes and their command pipes (``loadgen.ClientPool``'s collecting, other clients)."""

    def __init__(self, host: str, port: int, clients: int, procs: int, sources: list[str]) -> None:
        from loadgen import ClientPool

        self.pool = ClientPool.__new__(ClientPool)
        context = multiprocessing.get_context("spawn")
        self.pool.conns, self.pool.procs, self.pool.unclaimed = [], [], []
        for p in range(procs):
            parent, child = context.Pipe()
            indexes = list(range(p, clients, procs))
            proc = context.Process(target=client_process, args=(child, host, port, indexes, sources), daemon=True)
            proc.start()
            child.close()
            self.pool.conns.append(parent)
            self.pool.procs.append(proc)
            self.pool.unclaimed.append({})

    def ask(self, kind: str, *command: Any, timeout: float = 30) -> list[tuple]:
        return self.pool.ask(kind, *command, timeout=timeout)

    def status(self) -> dict[str, int]:
        replies = self.ask("status", "status")
        return {
            "open": sum(r[1] for r in replies),
            "caught_up": sum(r[2] for r in replies),
            "dropped": sum(r[3] for r in replies),
            "receiving": sum(r[4] for r in replies),
            "min_seq": min(r[5] for r in replies),
        }

    def pids(self) -> list[int]:
        return self.pool.pids()

    def stop(self) -> None:
        self.pool.stop()


# -- what runs beside the clients ---------------------------------------------------------------


class Publisher(threading.Thread):
    """Broadcasts ``<seq> <monotonic ns>`` to the facility at ``rate`` per second through RedisPublisher."""

    def __init__(self, rate: float) -> None:
        super().__init__(name="publisher", daemon=True)
        from ws4redis_uwsgi.publisher import RedisPublisher

        self.publisher = RedisPublisher(facility=FACILITY, broadcast=True)
        self.rate = rate
        self.last_seq = -1
        self.errors = 0
        self.late = 0.0  # the most the publisher fell behind its schedule, in seconds
        self.halt = threading.Event()

    def run(self) -> None:
        interval = 1.0 / self.rate
        start = time.monotonic()
        seq = 0
        while not self.halt.is_set():
            due = start + seq * interval
            delay = due - time.monotonic()
            if delay > 0:
                self.halt.wait(delay)
                if self.halt.is_set():
                    break
            else:
                self.late = max(self.late, -delay)
            try:
                self.publisher.publish_message(f"{seq} {time.monotonic_ns()}")
            except Exception:
                self.errors += 1
                continue  # the same number again: the sequence has no holes of ours
            self.last_seq = seq
            seq += 1

    def stop(self) -> int:
        self.halt.set()
        self.join(10)
        return self.last_seq


class Sampler(threading.Thread):
    """Every 100 ms: Redis's connected clients and the CPU seconds of each uWSGI process (from /proc)."""

    def __init__(self, redis_clients: Callable[[], int], pids: Callable[[], list[int]]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.redis_clients = redis_clients
        self.pids = pids
        self.samples: list[tuple[float, int]] = []
        self.cpu: dict[int, float] = {}  # pid -> the last CPU seconds seen
        self.halt = threading.Event()

    def sample_cpu(self) -> dict[int, float]:
        from processes import proc_cpu

        for pid in self.pids():
            used = proc_cpu(pid)
            if used:
                self.cpu[pid] = used
        return dict(self.cpu)

    def run(self) -> None:
        while not self.halt.wait(0.1):
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), self.redis_clients()))
            self.sample_cpu()

    def peak(self, since: float, until: float) -> int:
        return max((n for t, n in self.samples if since <= t <= until), default=-1)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes used between two samples (a process gone by then: up to its last sample)."""
    return sum(max(0.0, used - before.get(pid, 0.0)) for pid, used in after.items())


def steady_cost(sampler: Sampler, clients: int, rate: float, seconds: float = 3.0) -> tuple[float, float]:
    """The worker's CPU over ``seconds`` with every client open: (share of a core, µs per delivery)."""
    before = sampler.sample_cpu()
    time.sleep(seconds)
    used = cpu_since(before, sampler.sample_cpu())
    return used / seconds, used * 1e6 / (clients * rate * seconds)


# -- the run ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=1.0, help="broadcasts per second, the whole run (default 1)")
    parser.add_argument("--phases", default="crash,reload", help="crash (SIGKILL the worker), reload (SIGHUP the master)")
    parser.add_argument("--goal", type=float, default=10.0, help="seconds to have every client back and caught up")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for them at most, per phase")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses (127.0.0.1 ...)")
    parser.add_argument("--listen", type=int, default=4096, help="uWSGI's listen backlog (at most net.core.somaxconn)")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if any(p not in ("crash", "reload") for p in phases):
        parser.error("--phases takes crash and reload")
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)

    from processes import raise_open_files, run_stopping_all, stop_all_and_clean

    raise_open_files(args.clients + 2000)
    run_dir = Path(tempfile.mkdtemp(prefix="ws4redis-storm-"))
    try:
        return run_stopping_all(lambda: run(args, phases, run_dir))
    finally:
        stop_all_and_clean(run_dir, args.keep)


def run(args: argparse.Namespace, phases: list[str], run_dir: Path) -> int:
    from processes import wait_until
    from report import exit_status, print_table
    from systems import PEERS, EnvInfo, RedisProcess, Server, uwsgi_cores

    started = time.monotonic()
    redis_server = RedisProcess(run_dir).start()
    os.environ.update(BENCH_REDIS_PORT=str(redis_server.port), DJANGO_SETTINGS_MODULE="peersite.settings_ws4redis_uwsgi")
    import django

    django.setup()

    env = EnvInfo(PEERS[0], Path(sys.prefix), Path(sys.executable))
    extra = ("--pythonpath", str(REPO), "--listen", str(args.listen), "--worker-reload-mercy", "10")
    extra += ("--max-fd", str(uwsgi_cores(args.clients) + 2000))
    server = Server(env, run_dir, redis_server.port, uwsgi_cores(args.clients), extra=extra).start()
    master = server.pids()[0]
    print(f"uWSGI master {master}, worker {server.worker_pids()}, port {server.port}, log {server.log_path}", flush=True)

    def workers() -> list[int]:
        return [pid for pid in server.worker_pids() if pid != master]

    from ws4redis_uwsgi.bus.resources import COMMAND_POOL_SIZE

    # What "flat" allows, whatever the number of clients: a worker's command pool and its pub/sub
    # connection, twice (the new worker may connect before Redis has seen the old one's go), and the
    # publisher's connection.
    redis_bound = 2 * (COMMAND_POOL_SIZE + 1) + 1
    sampler = Sampler(redis_server.clients, server.pids)
    sampler.start()
    wait_until(lambda: len(sampler.samples) >= 3, 10, "the first samples")
    redis_idle = max(n for _, n in sampler.samples)
    publisher = Publisher(args.rate)
    publisher.start()
    sources = [f"127.0.0.{1 + i}" for i in range(max(1, args.sources))]
    pool = StormPool("127.0.0.1", server.port, args.clients, args.procs, sources)
    problems: list[str] = []
    try:
        pool.ask("started", "start")
        t = time.monotonic()
        wait_until(
            lambda: (s := pool.status())["open"] == args.clients and s["receiving"] == args.clients,
            max(120.0, args.clients / 50),
            f"{args.clients} clients open and receiving",
        )
        print(f"{args.clients} clients open and receiving after {time.monotonic() - t:.1f} s", flush=True)
        time.sleep(1.0)  # samples of Redis with every client connected
        redis_connected = max(n for t_, n in sampler.samples if t_ >= time.monotonic() - 1.0)

        steady: list[tuple[str, tuple[float, float]]] = []
        rows: list[list[str]] = []
        notes: list[str] = []
        for name in phases:
            if problems:
                notes.append(f"{name}: not run, the phase before did not end with every client back")
                continue
            # A settled start: every client open and past the messages of the last phase.
            wait_until(lambda: pool.status()["open"] == args.clients, args.timeout, "every client open")
            before_seq = publisher.last_seq
            wait_until(lambda seq=before_seq: pool.status()["min_seq"] >= seq, args.timeout, "every client caught up")
            steady.append((f"before {name}", steady_cost(sampler, args.clients, args.rate)))
            pool.ask("phase", "phase", name)
            old_workers = workers()
            redis_before = sampler.peak(time.monotonic() - 1.0, time.monotonic())
            cpu_before = sampler.sample_cpu()
            t0 = time.monotonic_ns()
            t0_s = time.monotonic()
            if name == "crash":
                for pid in old_workers:
                    os.kill(pid, signal.SIGKILL)
            else:
                os.kill(master, signal.SIGHUP)
            last_print = 0.0
            status: dict[str, int] = {}
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                status = pool.status()
                if status["caught_up"] == args.clients:
                    break
                if time.monotonic() - last_print >= 1.0:
                    last_print = time.monotonic()
                    print(
                        f"  {name} +{time.monotonic() - t0_s:4.1f}s  open {status['open']}  caught up {status['caught_up']}",
                        flush=True,
                    )
                time.sleep(0.1)
            cpu_after = sampler.sample_cpu()
            t_end = time.monotonic()
            reports = [r[1] for r in pool.ask("phase_report", "phase_report", timeout=60)]
            time.sleep(1.0)  # Redis after the storm
            redis_peak = sampler.peak(t0_s, t_end)
            redis_after = sampler.peak(time.monotonic() - 1.0, time.monotonic())

            reopened = [(r - t0) / 1e9 for rep in reports for r in rep["reopened"] if r]
            caught = [(c - t0) / 1e9 for rep in reports for c in rep["caught_up"] if c]
            dropped = sum(1 for rep in reports for d in rep["dropped"] if d)
            refused: dict[str, int] = {}
            closes: dict[str, int] = {}
            for rep in reports:
                for key, value in rep["refused"].items():
                    refused[key] = refused.get(key, 0) + value
                for key, value in rep["closes"].items():
                    closes[key] = closes.get(key, 0) + value
            attempts = sum(rep["attempts"] for rep in reports)
            all_caught = len(caught) == args.clients
            all_back = max(reopened) if len(reopened) == args.clients else float("nan")
            storm = max(caught) if all_caught else float("nan")
            cpu = cpu_since(cpu_before, cpu_after)
            met = all_caught and storm <= args.goal
            rows.append(
                [
                    name,
                    f"{dropped:,}",
                    f"{all_back:.1f}",
                    f"{storm:.1f}" if all_caught else f"{len(caught):,} only",
                    f"{percentile(caught, 0.5):.1f} / {percentile(caught, 0.99):.1f}",
                    f"{attempts:,}",
                    ", ".join(f"{k}: {v:,}" for k, v in sorted(refused.items())) or "none",
                    f"{cpu:.1f}",
                    f"{redis_before} / {redis_peak} / {redis_after}",
                    "met" if met else "NOT met",
                ]
            )
            notes.append(f"{name}: close codes seen {closes}")
            bad = {k: v for k, v in refused.items() if k not in ("503 with Retry-After", "timeout")}
            if bad:
                problems.append(f"{name}: handshakes refused other than with 503 and Retry-After: {bad}")
            if not all_caught:
                problems.append(f"{name}: {args.clients - len(caught):,} clients not caught up within {args.timeout:.0f} s")
            if dropped != args.clients:
                notes.append(f"{name}: {args.clients - dropped:,} clients were not cut by the restart")
            if redis_peak > redis_bound:
                problems.append(f"{name}: Redis connections {redis_peak} at the peak (bound {redis_bound})")
            if not met and all_caught:
                notes.append(f"{name}: every client caught up after {storm:.1f} s, goal {args.goal:.0f} s")
            print(f"  {name}: {status.get('caught_up', 0):,} caught up; worker pids {old_workers} -> {workers()}", flush=True)

        if not problems:
            wait_until(lambda: pool.status()["open"] == args.clients, args.timeout, "every client open")
            steady.append(("after the last phase", steady_cost(sampler, args.clients, args.rate)))
        final_seq = publisher.stop()
        finished = [r[1] for r in pool.ask("finished", "finish", final_seq, 30.0, timeout=90)]
    finally:
        publisher.halt.set()
        pool.stop()
        sampler.stop()

    lost = sum(f["lost"] for f in finished)
    repeated = sum(f["repeated"] for f in finished)
    gaps = sum(f["gaps"] for f in finished)
    received = sum(f["received"] for f in finished)
    expected = sum(f["expected"] for f in finished)
    never = sum(f["never"] for f in finished)
    connect_refused: dict[str, int] = {}
    for f in finished:
        for key, value in f["connect_refused"].items():
            connect_refused[key] = connect_refused.get(key, 0) + value

    print_table(
        f"Reconnect storm: {args.clients:,} resuming clients, {args.rate:g} broadcasts/s, one worker "
        f"(times in s from the signal; goal {args.goal:g} s)",
        [
            "phase",
            "cut",
            "all open",
            "all caught up",
            "caught up p50 / p99",
            "attempts",
            "refused or timed out",
            "worker CPU s",
            "Redis conns before / peak / after",
            "goal",
        ],
        rows,
        notes,
    )
    print()
    print(f"messages published                 {final_seq + 1:,} ({publisher.errors} publish errors)")
    print(f"publisher most behind its schedule {publisher.late:.2f} s")
    print(f"deliveries expected / received     {expected:,} / {received:,}")
    print(f"lost / repeated or reordered / gap {lost:,} / {repeated:,} / {gaps:,}")
    print(
        f"Redis connections                  {redis_idle} with no client, {redis_connected} with {args.clients:,}; "
        f"bound {redis_bound} (a worker's command pool of {COMMAND_POOL_SIZE} and pub/sub, twice, and the publisher)"
    )
    for when, (share, per_delivery) in steady:
        print(f"worker CPU, steady, {when:<12} {100 * share:.0f}% of a core, {per_delivery:.1f} us per delivery")
    if connect_refused:
        print(f"refused while first connecting     {connect_refused}")
    if lost or repeated or gaps or never:
        problems.append(f"{lost} lost, {repeated} repeated or reordered, {gaps} gap notices, {never} clients never received")
    if redis_connected > redis_bound:
        problems.append(f"Redis connections grew with the clients: {redis_idle} -> {redis_connected}")
    status = exit_status(started, problems)
    if status == 0 and any(row[-1] != "met" for row in rows):
        print(f"goal missed: not every client back and caught up within {args.goal:g} s")
        return 2
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
