"""Fan-out benchmark: one uWSGI websocket worker, N broadcast clients, M messages.

Starts a private redis-server and one uWSGI worker (gevent), opens N websocket
clients on one broadcast facility (in client processes of their own), then
PUBLISHes M messages straight to Redis and reports:

* delivered messages per second, lost and out-of-order deliveries;
* publish-to-receive latency (min, p50, p99, max);
* the worker's CPU per delivered message, and the CPU of Redis, of the
  load generator and of everything else on the machine over the same phase,
  so a saturated client or a busy machine shows;
* the worker's memory (RSS) per open websocket.

Usage (from the repository root)::

    python bench/fanout.py [--clients N] [--messages M] [--rate R] [--procs P]
                           [--uwsgi-arg=--tcp-nodelay ...] [--keep]

It exits with status 1 when a delivery was lost or the server closed a client.

Timestamps are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in
every process of the machine), taken just before PUBLISH and when the client's
asyncio task gets the message, so latency includes the client's own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FACILITY = "bench"
CHANNEL = f"test:broadcast:{FACILITY}"  # the test site's WS4REDIS_PREFIX is 'test'
WARMUP = "warmup"
#: Sent by every client as a browser would; the test site's ALLOWED_HOSTS lists 127.0.0.1.
ORIGIN = "http://127.0.0.1"
#: Handshakes in flight at once, over all client processes (uWSGI listens with a backlog of 1024).
OPEN_BATCH = 200
#: Stop waiting for deliveries when none arrived for this long after the last PUBLISH.
IDLE_TIMEOUT = 10.0


# -- the client processes ---------------------------------------------------------------


@dataclass
class Client:
    ws: Any
    records: list[tuple[int, str]] = field(default_factory=list)  # (receive time, message)
    warm: bool = False
    count: int = 0
    close_code: int | None = None


def client_process(conn: Connection, url: str, count: int, batch: int, messages: int) -> None:
    """Entry point of one client process: ``count`` websockets, driven by commands on ``conn``."""
    try:
        asyncio.run(_client_main(conn, url, count, batch, messages))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


async def _client_main(conn: Connection, url: str, count: int, batch: int, messages: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))

    # Open the websockets, a batch at a time.
    started = time.monotonic()
    clients: list[Client] = []
    errors: dict[str, int] = {}
    for start in range(0, count, batch):
        opened = await asyncio.gather(
            *(
                connect(
                    url, origin=ORIGIN, open_timeout=60, close_timeout=2, ping_interval=None, compression=None, max_size=2**20
                )
                for _ in range(start, min(count, start + batch))
            ),
            return_exceptions=True,
        )
        for result in opened:
            if isinstance(result, BaseException):
                name = type(result).__name__
                errors[name] = errors.get(name, 0) + 1
            else:
                clients.append(Client(result))
    conn.send(("connected", len(clients), errors, time.monotonic() - started))

    warm_missing = len(clients)
    pending = len(clients)  # clients that have not received every message yet
    done = asyncio.Event()
    if not clients:  # every handshake failed: nothing to wait for
        done.set()
        conn.send(("warm",))

    async def read(client: Client) -> None:
        nonlocal warm_missing, pending
        finished = False
        try:
            async for message in client.ws:
                now = time.monotonic_ns()
                if message == WARMUP:
                    if not client.warm:
                        client.warm = True
                        warm_missing -= 1
                        if warm_missing == 0:
                            conn.send(("warm",))
                    continue
                client.records.append((now, message))
                client.count += 1
                if client.count == messages:
                    finished = True
                    pending -= 1
                    if pending == 0:
                        done.set()
        except ConnectionClosed:
            pass
        finally:
            client.close_code = client.ws.close_code
            if not finished:  # closed early: it will receive nothing more
                pending -= 1
                if pending == 0:
                    done.set()

    readers = [asyncio.create_task(read(c)) for c in clients]

    async def report_progress() -> None:
        while not done.is_set():
            await asyncio.sleep(0.5)
            conn.send(("progress", sum(c.count for c in clients)))

    progress = asyncio.create_task(report_progress())
    # Until every client has every message, or the coordinator gives up waiting.
    finished_task = asyncio.create_task(done.wait())
    getter = asyncio.create_task(commands.get())
    await asyncio.wait({getter, finished_task}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        assert getter.result() == "stop", getter.result()
    else:
        getter.cancel()
    finished_task.cancel()
    progress.cancel()
    conn.send(("done", sum(c.count for c in clients)))

    # Only now, outside the measured phase: parse and send the results.
    command = await commands.get()
    assert command == "results", command
    conn.send(("results", _summarize(clients, messages)))

    command = await commands.get()
    assert command == "close", command
    for task in readers:
        task.cancel()
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    conn.send(("closed",))


def _summarize(clients: list[Client], messages: int) -> dict[str, Any]:
    latencies = array("q")
    received = duplicates = out_of_order = foreign = 0
    last_receive = 0
    close_codes: dict[str, int] = {}
    for client in clients:
        seen: set[int] = set()
        previous = -1
        for receive_ns, message in client.records:
            try:
                data = json.loads(message)
                seq, sent_ns = int(data["seq"]), int(data["t"])
            except (ValueError, KeyError, TypeError):
                foreign += 1
                continue
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            received += 1
            if seq < previous:
                out_of_order += 1
            previous = max(previous, seq)
            latencies.append(receive_ns - sent_ns)
            last_receive = max(last_receive, receive_ns)
        if client.close_code is not None:
            close_codes[str(client.close_code)] = close_codes.get(str(client.close_code), 0) + 1
    return {
        "clients": len(clients),
        "received": received,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "foreign": foreign,
        "incomplete_clients": sum(1 for c in clients if c.count < messages),
        "last_receive_ns": last_receive,
        "latencies": latencies.tobytes(),
        "close_codes": close_codes,
    }


# -- the coordinator -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (anything but idle and iowait), since boot."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def rss_kib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 1024


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[index])


class ClientProcesses:
    """The load generator's client processes and their command pipes."""

    def __init__(self, url: str, clients: int, procs: int, messages: int) -> None:
        context = multiprocessing.get_context("spawn")  # children without Django, redis or servers
        procs = max(1, min(procs, clients))
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        batch = max(1, OPEN_BATCH // procs)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for share in shares:
            parent, child = context.Pipe()
            proc = context.Process(target=client_process, args=(child, url, share, batch, messages), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send_all(self, command: str) -> None:
        for conn in self.conns:
            conn.send(command)

    def collect(
        self, kind: str, timeout: float, on_other: Any = None, skip: set[int] | frozenset[int] = frozenset()
    ) -> list[tuple]:
        """One ``kind`` reply from every process but those in ``skip``; other replies go to ``on_other``.

        Replies are also handed to ``on_other`` when it is given, so a caller
        can remember which processes answered before a timeout.
        """
        replies: dict[int, tuple] = {i: (kind,) for i in skip}
        deadline = time.monotonic() + timeout
        while len(replies) < len(self.conns):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"client processes did not report {kind!r} within {timeout:.0f}s")
            for conn in wait([c for i, c in enumerate(self.conns) if i not in replies], min(remaining, 0.5)):
                index = self.conns.index(conn)  # type: ignore[arg-type]
                try:
                    reply = conn.recv()  # type: ignore[union-attr]
                except EOFError:
                    raise RuntimeError(f"client process {index} died (exit code {self.procs[index].exitcode})") from None
                if reply[0] == kind:
                    replies[index] = reply
                if on_other is not None:
                    on_other(index, reply)
        return [replies[i] for i in range(len(self.conns))]

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()


def uwsgi_cores(clients: int) -> int:
    """Async cores for ``clients`` websockets, with room for the worker to keep a few cores free."""
    return clients + 100 + clients // 40


def migrate(workdir: Path, redis_url: str) -> dict[str, str]:
    """Set the test site's environment (as tests/conftest.py does) and migrate its SQLite database."""
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.testsite.settings",
        "WS4REDIS_TEST_DB": str(workdir / "site.sqlite3"),
        "WS4REDIS_TEST_REDIS": redis_url,
    }
    os.environ.update(env)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return env


#: Lines of the uWSGI log that point at a problem (the worker's Python logging included).
LOG_MARKERS = (
    "Traceback",
    "Error",
    "error",
    "Exception",
    "closing",
    "behind",
    "lost",
    "failed",
    "refused",
    "DAMN",
    "Segmentation fault",
)
#: uWSGI's usual start-up complaints on this kind of machine.
LOG_BENIGN = ("running uWSGI as root", "no internal routing support")


def log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(m in line for m in LOG_MARKERS) and not any(b in line for b in LOG_BENIGN)]


def run(args: argparse.Namespace) -> int:
    import redis
    from websockets.sync.client import connect as sync_connect

    from tests.servers import RedisServer, UwsgiServer, wait_for

    workdir = Path(tempfile.mkdtemp(prefix="ws4redis-bench-"))
    redis_server = RedisServer(workdir=workdir)
    uwsgi_server: UwsgiServer | None = None
    clients: ClientProcesses | None = None
    keep = args.keep
    try:
        env = migrate(workdir, redis_server.url)
        redis_server.start()
        uwsgi_server = UwsgiServer(
            env, cores=uwsgi_cores(args.clients), extra=args.uwsgi_arg, log_path=workdir / "uwsgi.log"
        ).start()
        workers = uwsgi_server.worker_pids()
        assert len(workers) == 1, workers
        worker = workers[0]
        assert redis_server.proc is not None
        redis_pid = redis_server.proc.pid
        bus = redis.Redis.from_url(redis_server.url)
        url = f"{uwsgi_server.url}/ws/{FACILITY}?subscribe-broadcast"

        # One connection opened and closed first, so the baseline already holds the
        # worker's one-time costs (the hub, its Redis connections, lazily imported code).
        with sync_connect(url, origin=ORIGIN, open_timeout=10, ping_interval=None, compression=None) as ws:
            bus.publish(CHANNEL, WARMUP)
            assert ws.recv(timeout=10) == WARMUP
        wait_for(lambda: not dict(bus.pubsub_numsub(CHANNEL)).get(CHANNEL.encode()), 10, "the warm-up client to leave")
        time.sleep(0.5)
        rss_before = rss_kib(worker)

        # Open the clients.
        print(f"opening {args.clients} websockets from {args.procs} client process(es)...", flush=True)
        clients = ClientProcesses(url, args.clients, args.procs, args.messages)
        connected = clients.collect("connected", 120 + args.clients / 20)
        opened = sum(r[1] for r in connected)
        open_errors: dict[str, int] = {}
        for reply in connected:
            for name, n in reply[2].items():
                open_errors[name] = open_errors.get(name, 0) + n
        open_seconds = max(r[3] for r in connected)
        if opened == 0:
            raise RuntimeError(f"no websocket opened: {open_errors}")
        time.sleep(1.0)  # let the worker settle before measuring memory
        rss_after = rss_kib(worker)

        # Wait until every client is subscribed: a warm-up message reached each of them.
        warm: set[int] = set()
        for _ in range(30):
            bus.publish(CHANNEL, WARMUP)
            try:
                clients.collect("warm", 2.0, lambda index, reply: reply[0] == "warm" and warm.add(index), skip=warm)
                break
            except TimeoutError:
                continue
        else:
            raise RuntimeError("not every client received the warm-up message within 60s")
        time.sleep(0.5)  # let the last warm-up frames drain everywhere

        # The measured phase.
        pids = {"worker": worker, "redis": redis_pid, "self": os.getpid()}
        pids.update({f"client{i}": pid for i, pid in enumerate(clients.pids())})
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        machine_before = machine_busy_seconds()
        wall_before = time.monotonic_ns()
        interval = 1e9 / args.rate if args.rate else 0.0
        first_publish = time.monotonic_ns()
        receivers = set()
        for seq in range(args.messages):
            if interval:
                delay = first_publish + seq * interval - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
            receivers.add(bus.publish(CHANNEL, f'{{"seq":{seq},"t":{time.monotonic_ns()}}}'))
        last_publish = time.monotonic_ns()

        progress = [0] * len(clients.conns)
        last_change = [time.monotonic()]
        finished: set[int] = set()

        def on_reply(index: int, reply: tuple) -> None:
            if reply[0] == "done":
                finished.add(index)
            elif reply[0] == "progress" and reply[1] != progress[index]:
                progress[index] = reply[1]
                last_change[0] = time.monotonic()

        # Wait until every client has every message, or until deliveries stopped coming.
        timed_out = False
        while True:
            try:
                clients.collect("done", 1.0, on_reply, skip=finished)
                break
            except TimeoutError:
                if time.monotonic() - last_change[0] >= IDLE_TIMEOUT:
                    timed_out = True
                    for index, conn in enumerate(clients.conns):
                        if index not in finished:
                            conn.send("stop")
                    clients.collect("done", 30, on_reply, skip=finished)
                    break
        wall_after = time.monotonic_ns()
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        machine_after = machine_busy_seconds()

        clients.send_all("results")
        results = [r[1] for r in clients.collect("results", 120)]
        clients.send_all("close")
        clients.collect("closed", 60)
        clients.stop()
        clients = None

        # The figures.
        latencies: list[int] = []
        for result in results:
            chunk = array("q")
            chunk.frombytes(result["latencies"])
            latencies.extend(chunk)
        latencies.sort()
        received = sum(r["received"] for r in results)
        expected = opened * args.messages
        last_receive = max(r["last_receive_ns"] for r in results)
        delivery_seconds = (last_receive - first_publish) / 1e9 if received else float("nan")
        phase_seconds = (wall_after - wall_before) / 1e9
        cpu = {name: cpu_after[name] - cpu_before[name] for name in pids}
        client_cpu = sum(v for k, v in cpu.items() if k.startswith("client"))
        # Whatever else ran on the machine meanwhile (other processes, the kernel's own work).
        others = max(0.0, (machine_after - machine_before) - sum(cpu.values()))
        close_codes: dict[str, int] = {}
        for result in results:
            for code, n in result["close_codes"].items():
                close_codes[code] = close_codes.get(code, 0) + n

        def pct(seconds: float) -> str:
            return f"{100 * seconds / phase_seconds:5.1f}% of a core"

        rows: list[tuple[str, str]] = [
            ("clients requested / opened", f"{args.clients} / {opened}" + (f"  (failed: {open_errors})" if open_errors else "")),
            ("messages published", f"{args.messages}"),
            ("target publish rate", f"{args.rate:g} msg/s" if args.rate else "as fast as possible"),
            ("client processes", f"{len(results)}"),
            (
                "uWSGI gevent cores",
                f"{uwsgi_cores(args.clients)}" + (f"  (extra: {' '.join(args.uwsgi_arg)})" if args.uwsgi_arg else ""),
            ),
            ("opening the websockets took", f"{open_seconds:.2f} s"),
            ("", ""),
            ("worker RSS before / after clients", f"{rss_before / 1024:.1f} MiB / {rss_after / 1024:.1f} MiB"),
            ("worker RSS per connection", f"{(rss_after - rss_before) / opened:.1f} KiB"),
            ("", ""),
            ("publishing took", f"{(last_publish - first_publish) / 1e6:.1f} ms"),
            ("Redis receivers per PUBLISH", ", ".join(str(r) for r in sorted(receivers))),
            ("deliveries expected / received", f"{expected} / {received}"),
            ("lost deliveries", f"{expected - received}"),
            ("out of order / duplicate", f"{sum(r['out_of_order'] for r in results)} / {sum(r['duplicates'] for r in results)}"),
            ("clients missing messages", f"{sum(r['incomplete_clients'] for r in results)}"),
            ("first publish -> last delivery", f"{delivery_seconds:.3f} s"),
            ("delivered messages per second", f"{received / delivery_seconds:,.0f}" if received else "-"),
            (
                "latency min / p50 / p99 / max",
                " / ".join(f"{percentile(latencies, p) / 1e6:.1f}" for p in (0, 50, 99, 100)) + " ms",
            ),
            ("", ""),
            ("worker CPU in the phase", f"{cpu['worker']:.2f} s  ({pct(cpu['worker'])})"),
            ("worker CPU per delivered message", f"{1e6 * cpu['worker'] / received:.1f} us" if received else "-"),
            ("redis-server CPU in the phase", f"{cpu['redis']:.2f} s  ({pct(cpu['redis'])})"),
            ("load generator CPU: publisher", f"{cpu['self']:.2f} s  ({pct(cpu['self'])})"),
        ]
        for name in sorted(k for k in cpu if k.startswith("client")):
            rows.append((f"load generator CPU: {name}", f"{cpu[name]:.2f} s  ({pct(cpu[name])})"))
        rows.append(
            ("load generator CPU per delivery", f"{1e6 * (client_cpu + cpu['self']) / received:.1f} us" if received else "-")
        )
        rows.append(("everything else on the machine", f"{others:.2f} s  ({pct(others)})"))
        rows.append(("phase wall time (CPU window)", f"{phase_seconds:.3f} s on {os.cpu_count()} CPUs"))

        width = max(len(k) for k, _ in rows)
        print()
        print(f"ws4redis_uwsgi fan-out: {args.clients} clients x {args.messages} messages, one uWSGI worker")
        print("-" * (width + 40))
        for key, value in rows:
            print(f"{key:<{width}}  {value}" if key else "")
        print("-" * (width + 40))

        notes = []
        busiest = max((v for k, v in cpu.items() if k.startswith("client")), default=0.0)
        if busiest / phase_seconds > 0.8:
            notes.append("a client process was busy for >80% of the phase: the load generator may be the bottleneck")
        if cpu["worker"] / phase_seconds > 0.8:
            notes.append("the worker was busy for >80% of the phase: it is saturated")
        total = sum(cpu.values())
        if total / phase_seconds > 0.9 * (os.cpu_count() or 1):
            notes.append(
                f"all processes together used {total / phase_seconds:.2f} of {os.cpu_count()} CPUs: the machine is saturated"
            )
        if others / phase_seconds > 0.15:
            notes.append(
                f"other processes used {others / phase_seconds:.2f} CPUs during the phase: "
                "the figures are disturbed, run again on a quiet machine"
            )
        if not args.rate:
            notes.append("messages were published in a burst: latency includes queueing behind earlier messages (use --rate)")
        if timed_out:
            notes.append(f"stopped waiting: no delivery for {IDLE_TIMEOUT:.0f}s after the last one")
        if close_codes:
            notes.append(f"websockets closed by the server during the phase, by close code: {close_codes}")
        problems = log_problems(uwsgi_server.log_text())
        if problems:
            keep = True
            notes.append(f"the uWSGI log has {len(problems)} suspicious line(s): {uwsgi_server.log_path}")
            counted: dict[str, int] = {}
            for line in problems:
                counted[line] = counted.get(line, 0) + 1
            notes.extend(f"  {n} x {line}" for line, n in list(counted.items())[:10])
        for note in notes:
            print(f"note: {note}")
        return 0 if received == expected and not close_codes else 1
    except BaseException:
        keep = True  # the uWSGI log may tell why
        raise
    finally:
        if clients is not None:
            for proc in clients.procs:
                proc.terminate()
            clients.stop()
        if uwsgi_server is not None:
            uwsgi_server.stop()
        redis_server.stop()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="websocket clients (default 1000)")
    parser.add_argument("--messages", type=int, default=200, help="messages to publish (default 200)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="target publish rate in messages/s (default: as fast as possible)"
    )
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument(
        "--uwsgi-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra uWSGI command-line argument, repeatable (e.g. --uwsgi-arg=--tcp-nodelay)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with the uWSGI log")
    args = parser.parse_args()
    if args.clients < 1 or args.messages < 1 or args.rate < 0 or args.procs < 1:
        parser.error("--clients, --messages and --procs must be positive, --rate not negative")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
