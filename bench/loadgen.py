"""The load generator: client processes of ``bench/wsclient.py`` (asyncio on uvloop), driven over pipes.

Every peer gets the same clients: ``--procs`` processes (default 2), a few µs
of client CPU per received message, so the client is not what limits the
figures (the tables show its CPU). Messages are ``{"p":phase,"seq":n,"t":ns}``
with ``t`` from ``time.monotonic_ns()`` just before publishing; each process
records what its websockets receive during a phase and sends back counts of
deliveries, duplicates, reorderings and the publish-to-receive latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

#: Both ws4redis peers check Origin against ALLOWED_HOSTS (ws4redis_uwsgi) or ignore it (0.6); Channels' validator too.
ORIGIN = "http://127.0.0.1"
#: What the publisher broadcasts until every client received one: then the server has subscribed them all.
WARMUP = "warmup"
#: The fan-out stops waiting for a phase's deliveries when the client processes reported none for this long.
IDLE_TIMEOUT = 6.0
#: Connections per loopback source address at most. One source address has one range of ephemeral
#: ports towards the server's address and port (``net.ipv4.ip_local_port_range``: 32768-60999 by
#: default, about 28,000), so past this many the clients connect from 127.0.0.2, 127.0.0.3, ...
#: (all of 127.0.0.0/8 is the loopback interface's on Linux, nothing to configure).
PER_SOURCE_ADDRESS = 25_000
#: Descriptors a client process keeps for itself (its pipe, the event loop, Python's own).
CLIENT_FD_RESERVE = 200


def source_addresses(count: int) -> list[str | None]:
    """The local addresses ``count`` connections are spread over: none to choose up to :data:`PER_SOURCE_ADDRESS`."""
    if count <= PER_SOURCE_ADDRESS:
        return [None]
    return [f"127.0.0.{2 + i}" for i in range(-(-count // PER_SOURCE_ADDRESS))]


def client_processes(count: int, wanted: int) -> int:
    """Client processes for ``count`` connections: ``wanted``, or more when one process cannot open its share.

    Each connection is a descriptor of the client process, and a process may not open more than its
    hard limit (``ulimit -Hn``), which an unprivileged process cannot raise.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_process = max(1000, (hard if hard != resource.RLIM_INFINITY else 1 << 20) - CLIENT_FD_RESERVE)
    return max(wanted, -(-count // per_process))


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


def command_queue(conn: Connection) -> asyncio.Queue[tuple]:
    """The coordinator's commands on ``conn`` as a queue of the running loop (``("exit",)`` once the pipe closes)."""
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
    return commands


async def _client_main(conn: Connection, url: str) -> None:
    from urllib.parse import urlsplit

    from wsclient import HandshakeError, WebsocketClient, connect

    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, f"{parts.path}?{parts.query}"
    warmup = WARMUP.encode()
    commands = command_queue(conn)
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
        semaphore: asyncio.Semaphore,
        errors: dict[str, int],
        opened_at: list[int],
        timeout: float,
        cookie: str | None,
        source: str | None,
    ) -> None:
        async with semaphore:
            c = Conn(None)
            try:
                c.ws = await connect(host, port, path, receiver(c), origin=ORIGIN, cookie=cookie, timeout=timeout, source=source)
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
            count, concurrency, timeout, cookies, sources = command[1], command[2], command[3], command[4], command[5]
            errors: dict[str, int] = {}
            opened_at: list[int] = []
            semaphore = asyncio.Semaphore(max(1, concurrency))
            started = time.monotonic_ns()
            per_client = [cookies[i % len(cookies)] for i in range(count)] if cookies else [None] * count
            await asyncio.gather(
                *(
                    open_one(semaphore, errors, opened_at, timeout, cookie, sources[i] if sources else None)
                    for i, cookie in enumerate(per_client)
                )
            )
            conn.send(("opened", len(opened_at), errors, started, max(opened_at, default=started)))
        elif kind == "pings":
            conn.send(("pings", WebsocketClient.pings_answered))
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

    def __init__(self, urls: list[str]) -> None:
        """One client process per URL, its websockets to that URL."""
        context = multiprocessing.get_context("spawn")  # children without the coordinator's state
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        #: Replies received but not yet returned by collect(), per process and kind, oldest first: a reply
        #: that arrives in a call that then times out, or while the pool waits for another kind, stays here
        #: until a collect() of its kind takes it.
        self.unclaimed: list[dict[str, list[tuple]]] = []
        #: Connections opened so far, over all processes: the next open() goes on from there over the source addresses.
        self.opened_total = 0
        for url in urls:
            parent, child = context.Pipe()
            proc = context.Process(target=client_process, args=(child, url), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
            self.unclaimed.append({})

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, *command: Any) -> None:
        for conn in self.conns:
            conn.send(command)

    def collect(self, kind: str, timeout: float, on_progress: Callable[[int, tuple], None] | None = None) -> list[tuple]:
        """One ``kind`` reply from every process, in process order.

        No reply is lost, whatever the timing: the replies are kept in ``unclaimed`` until a call for
        their kind returns them, so a call that times out (``TimeoutError``) keeps those that came, and
        the next call only waits for the others. ``progress`` reports are not replies: they go to
        ``on_progress`` (or nowhere) as they come.
        """
        deadline = time.monotonic() + timeout
        while missing := [i for i, unclaimed in enumerate(self.unclaimed) if not unclaimed.get(kind)]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"client processes {missing} of {len(self.conns)} did not report {kind!r} within {timeout:g}s")
            for ready in wait([self.conns[i] for i in missing], min(remaining, 0.5)):
                index = self.conns.index(ready)  # type: ignore[arg-type]
                try:
                    reply: tuple = self.conns[index].recv()
                except EOFError:
                    raise RuntimeError(f"client process {index} died (exit code {self.procs[index].exitcode})") from None
                if reply[0] == "progress":
                    if on_progress is not None:
                        on_progress(index, reply)
                else:
                    self.unclaimed[index].setdefault(reply[0], []).append(reply)
        return [unclaimed[kind].pop(0) for unclaimed in self.unclaimed]

    def ask(self, kind: str, *command: Any, timeout: float = 30) -> list[tuple]:
        """Send ``command`` to every process and collect its ``kind`` replies.

        Unclaimed ``kind`` replies, of an earlier command, are dropped first (``forget``).
        """
        self.forget(kind)
        self.send(*command)
        return self.collect(kind, timeout)

    def forget(self, kind: str) -> None:
        """Drop the unclaimed ``kind`` replies: they answered a command whose collect() gave up."""
        for unclaimed in self.unclaimed:
            unclaimed.pop(kind, None)

    def open(self, count: int, concurrency: int, timeout: float, cookies: list[str] | None = None) -> dict[str, Any]:
        """Open ``count`` websockets with at most ``concurrency`` handshakes in flight, over all processes.

        With ``cookies``, the clients send them in turn (``Cookie:`` headers of logged-in users). Past
        :data:`PER_SOURCE_ADDRESS` connections of this pool (this call's and the earlier ones'), they
        come from several loopback addresses, at most that many from each (:func:`source_addresses`).
        """
        n = len(self.conns)
        addresses = source_addresses(self.opened_total + count)
        self.forget("opened")
        first = self.opened_total
        for i, conn in enumerate(self.conns):
            share = count // n + (1 if i < count % n else 0)
            sources = None
            if addresses != [None]:
                # Connection k of the scenario (over all processes and calls) from address k // PER_SOURCE_ADDRESS.
                sources = [addresses[min(len(addresses) - 1, (first + j) // PER_SOURCE_ADDRESS)] for j in range(share)]
            conn.send(("open", share, max(1, concurrency // n), 30.0, cookies[i::n] if cookies else None, sources))
            first += share
        self.opened_total = first
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

    def pings(self) -> int:
        """Pings the clients of all processes answered since they started."""
        return sum(r[1] for r in self.ask("pings", "pings"))

    def close_all(self, timeout: float = 30) -> None:
        self.ask("closed", "close", timeout, timeout=timeout + 30)

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


def loop_name() -> str:
    """The event loop the client processes run on: uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"
