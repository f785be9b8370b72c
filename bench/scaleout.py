"""Scale-out: two websocket vassals against one, a Redis Cluster against one Redis, the cost of history.

The figures of the "Scale-out" issue, side by side in one run (``ws4redis_uwsgi``
from this checkout, its default settings unless a row says otherwise):

(1) broadcast fan-out to N clients (default 2,000) through two websocket
    vassals on one Redis (N/2 clients each) and through one vassal (all N),
    at increasing publish rates and then as fast as the publisher goes:
    deliveries/s measured at the clients, p99 latency, the vassals' CPU per
    delivery (``/proc``) and the ratio two/one. Each vassal is one uWSGI
    worker under gevent, started as ``bench/systems.py`` starts
    ws4redis_uwsgi, in this virtual environment; the publisher is a helper
    process publishing with ``RedisPublisher(facility=..., broadcast=True)``
    (history on), the clients are ``bench/loadgen.py``'s processes;
(2) publishes/s from several publisher processes (``RedisPublisher`` loops on
    distinct facilities, so the channels spread over the Cluster's slots),
    for a fixed time, against one redis-server and against a three-master
    Redis Cluster with a replica each (``tests/topologies.py``), history on,
    with Redis's CPU per publish (all its processes, from ``/proc``);
(3) Redis CPU per publish with history on and off, the same runs;
(4) one publish to 1,000 users' channels: wall time (median), the requests
    the publisher sent to Redis (counted in redis-py), the script calls each
    master ran (``INFO commandstats``) and Redis's CPU, on one Redis and on
    the Cluster.

Usage (from the repository root)::

    .venv/bin/python bench/scaleout.py [--quick] [--figures 1,2,3,4] [--keep]

Everything runs on loopback and is stopped at the end, also on Ctrl-C. The
exit status is 1 when a delivery of (1) was lost, repeated or out of order,
or a publish of (2)-(4) failed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from loadgen import IDLE_TIMEOUT, ORIGIN, WARMUP, ClientPool, loop_name
from peers import parse_rates
from processes import CpuWindow, clean_env, raise_open_files, run_stopping_all, stop_all_and_clean
from report import exit_status, fmt_num, pct, print_table
from scenarios import fanout_phase
from systems import (
    BASELINE,
    PEERS,
    EnvInfo,
    Failure,
    Publisher,
    RedisProcess,
    Server,
    log_findings,
    serve_publishes,
    uwsgi_cores,
    warm_all,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(1, str(REPO))  # tests.topologies (ClusterSet)

FACILITY = "bench"
#: The vassals' settings: ws4redis_uwsgi's defaults (history on), channels ``broadcast:<facility>``.
SETTINGS = "peersite.settings_ws4redis_uwsgi"
#: What the publishers of (2) and (3) send: about the size of (1)'s messages.
PAYLOAD = '{"p":0,"seq":123456,"t":1234567890123456789,"text":"scale-out"}'
#: (2) and (3): facilities each publisher process cycles through (channels = processes x this).
FACILITIES_PER_PUBLISHER = 4


# -- (1) the vassals ---------------------------------------------------------------------------


def venv_env() -> EnvInfo:
    """ws4redis_uwsgi as this interpreter's virtual environment has it (``make`` installs the checkout with uWSGI)."""
    spec = next(p for p in PEERS if p.name == BASELINE)
    path = Path(sys.prefix)
    info = EnvInfo(spec, path, Path(sys.executable))
    if not (path / "bin" / "uwsgi").exists():
        info.error = Failure("not installed", "FileNotFoundError", f"no uwsgi in {path / 'bin'}: run make")
    return info


class WsPublisher(Publisher):
    """The publisher helper of (1): this file with ``--publisher``, publishing through ``RedisPublisher``."""

    def __init__(self, workdir: Path, redis_port: int) -> None:
        self._buffer = b""
        env = clean_env(BENCH_REDIS_PORT=str(redis_port), DJANGO_SETTINGS_MODULE=SETTINGS, PYTHONPATH=str(BENCH))
        self._spawn([sys.executable, str(Path(__file__).resolve()), "--publisher"], env, workdir, workdir / "publisher.log", True)
        self._read(60)


def publisher_main() -> int:
    """``scaleout.py --publisher``: ``systems.serve_publishes``, publishing with ``RedisPublisher``."""
    import django

    django.setup()
    import redis

    from ws4redis_uwsgi.publisher import RedisPublisher

    publisher = RedisPublisher(facility=FACILITY, broadcast=True)
    failures: list[str] = []

    def publish(payload: str) -> int | None:
        try:
            return publisher.publish_message(payload)
        except redis.RedisError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return None

    return serve_publishes(publish, failures)


def warm_single(server: Server, publisher: Publisher, timeout: float = 30) -> None:
    """One websocket to ``server`` until a broadcast reaches it: the vassal is up and subscribed (as ``Stack``)."""
    from websockets.sync.client import connect

    deadline = time.monotonic() + timeout
    with connect(server.url(), origin=ORIGIN, open_timeout=timeout, ping_interval=None, compression=None) as ws:
        while True:
            publisher.call(10, cmd="warmup")
            try:
                # The first frame may be the message the channel still persists: read until the warm-up.
                while ws.recv(timeout=0.5) != WARMUP:
                    pass
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the first client received no broadcast") from None


def run_vassals(args: argparse.Namespace, env: EnvInfo, run_dir: Path, vassals: int) -> dict[str, Any]:
    """(1) for ``vassals`` vassals: the clients split evenly over them; one phase per rate (0: flat out)."""
    out: dict[str, Any] = {"phases": {}, "notes": []}
    workdir = Path(tempfile.mkdtemp(prefix=f"vassals{vassals}-", dir=run_dir))
    redis_proc: RedisProcess | None = None
    servers: list[Server] = []
    publisher: WsPublisher | None = None
    pool: ClientPool | None = None
    try:
        redis_proc = RedisProcess(workdir).start()
        for _ in range(vassals):
            servers.append(Server(env, workdir, redis_proc.port, uwsgi_cores(args.clients // vassals)).start())
        publisher = WsPublisher(workdir, redis_proc.port)
        for server in servers:
            warm_single(server, publisher)
        # The same number of client processes either way, one vassal's URL each.
        pool = ClientPool([servers[i % vassals].url() for i in range(args.procs)])
        opened = pool.open(args.clients, args.concurrency, 120 + args.clients / 20)
        time.sleep(1.0)
        warm, live = warm_all(pool, publisher)
        out["opened"], out["held"] = opened["opened"], live
        if opened["errors"]:
            out["notes"].append(f"handshakes failed: {opened['errors']}")
        if warm < live:
            out["notes"].append(f"only {warm} of {live} open clients received the warm-up broadcast")
        groups = {f"vassal{i}": server.pids() for i, server in enumerate(servers)}
        groups.update(redis=[redis_proc.pid], publisher=[publisher.pid], self=[os.getpid()])
        groups.update({f"client{i}": [pid] for i, pid in enumerate(pool.pids())})
        for phase, rate in enumerate(args.rates, start=1):
            messages = args.flat_out_messages if rate == 0 else max(10, round(rate * args.seconds))
            out["phases"][rate] = fanout_phase(pool, publisher, groups, phase, rate, messages, args.drain)
        out["notes"].extend(f"vassal {i}: {line}" for i, s in enumerate(servers) for line in log_findings(s.log_text()))
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close_all(20)
            pool.stop()
        for child in (publisher, *servers, redis_proc):
            if child is not None:
                child.stop()
    return out


def figure_vassals(args: argparse.Namespace, run_dir: Path, log: Callable[[str], None]) -> tuple[dict[int, Any], list[str]]:
    env = venv_env()
    results: dict[int, Any] = {}
    for vassals in (1, 2):
        log(f"(1) {vassals} vassal{'s' if vassals > 1 else ''}, {args.clients:,} clients ...")
        if env.error:
            results[vassals] = env.error
            continue
        try:
            results[vassals] = run_vassals(args, env, run_dir, vassals)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            results[vassals] = Failure.of("failed", exc)
    return results, table_vassals(results, args)


def rate_label(rate: float) -> str:
    return "flat out" if rate == 0 else f"{rate:g}/s"


def table_vassals(results: dict[int, Any], args: argparse.Namespace) -> list[str]:
    """Table (1); returns the problems that fail the run."""
    problems: list[str] = []
    rows: list[list[str]] = []
    notes: list[str] = []
    cores = os.cpu_count() or 1
    one = results.get(1) if isinstance(results.get(1), dict) else None
    for rate in args.rates:
        for vassals, res in results.items():
            label = f"{vassals} vassal{'s' if vassals > 1 else ''}"
            if not isinstance(res, dict):
                rows.append([rate_label(rate), label, str(res.cell() if isinstance(res, Failure) else res), *[""] * 10])
                continue
            p = res["phases"].get(rate)
            if p is None:
                continue
            w: CpuWindow = p["window"]
            vassal_keys = sorted(k for k in w.delta if k.startswith("vassal"))
            vassal_cpu = sum(w.delta[k] for k in vassal_keys)
            loadgen = sum(v for k, v in w.delta.items() if k.startswith("client"))
            busy = (sum(w.delta.values()) + w.others) / w.wall if w.wall else float("nan")
            base = one["phases"].get(rate) if one and vassals != 1 else None
            ratio = f"{p['rate'] / base['rate']:.2f}x" if base and base["rate"] else ""
            rows.append(
                [
                    rate_label(rate),
                    label,
                    f"{p['clients']:,}",
                    fmt_num(p["rate"]),
                    ratio,
                    f"{p['lost']:,}",
                    fmt_num(p["p50"], 1),
                    fmt_num(p["p99"], 1),
                    fmt_num(1e6 * vassal_cpu / p["received"], 2) if p["received"] else "-",
                    " + ".join(pct(w.share(w.delta[k])) for k in vassal_keys),
                    pct(w.share(w.delta["redis"])),
                    f"{pct(w.share(loadgen))} | {pct(w.share(w.delta['publisher']))}",
                    f"{busy:.2f} of {cores}" + (f" (others {w.share(w.others):.2f})" if w.others > 0.1 * w.wall else ""),
                ]
            )
            where = f"{label} @ {rate_label(rate)}"
            if p["lost"] or p["duplicates"] or p["out_of_order"]:
                problems.append(
                    f"(1) {where}: {p['lost']:,} of {p['expected']:,} deliveries lost, {p['duplicates']} repeated, "
                    f"{p['out_of_order']} out of order"
                )
            if p["publish_failed"]:
                problems.append(f"(1) {where}: {p['publish_failed']} publishes failed: {p['publish_failure']}")
            if p["timed_out"]:
                notes.append(
                    f"{where}: stopped waiting {args.drain:.0f}s after publishing or {IDLE_TIMEOUT:.0f}s without a delivery"
                )
            if p["closed"]:
                notes.append(f"{where}: websockets closed during the phase, by close code: {p['closed']}")
            if rate == 0:
                notes.append(
                    f"{where}: {p['messages']} messages published in {p['publish_s']:.2f} s "
                    f"({p['messages'] / p['publish_s']:,.0f}/s), delivered to all in {p['received'] / p['rate']:.2f} s"
                    if p["rate"] and p["publish_s"]
                    else f"{where}: nothing delivered"
                )
    for vassals, res in results.items():
        if not isinstance(res, dict):
            problems.append(f"(1) {vassals} vassal(s): {res}")
            notes.append(f"{vassals} vassal(s): {res}")
            continue
        if res["held"] < args.clients:
            notes.append(
                f"{vassals} vassal(s): held {res['held']} of {args.clients} clients ({res['opened']} handshakes succeeded)"
            )
        notes.extend(f"{vassals} vassal(s): {n}" for n in res["notes"])
    notes.append(
        "at a paced rate both deliver what is published (two/one about 1.00: compare p99 and CPU); flat out shows capacity"
    )
    notes.append(
        f"this machine has {cores} CPUs: the vassals share them with Redis, the publisher and the {args.procs} client processes, "
        "so the two/one ratio is bounded by the hardware, not by the vassals"
    )
    notes.append(
        "vassal CPU: utime+stime of each uWSGI master + worker from /proc over the phase, per delivery (us) and as a share "
        "of one core; machine: busy CPUs from /proc/stat (others: processes not of this run)"
    )
    print_table(
        f"(1) broadcast fan-out to {args.clients:,} clients on one Redis: two websocket vassals "
        f"({args.clients // 2:,} clients each) against one, {args.seconds:g} s per rate, "
        f"then {args.flat_out_messages} messages as fast as the publisher goes",
        [
            "rate",
            "vassals",
            "clients",
            "deliveries/s",
            "two/one",
            "lost",
            "p50 ms",
            "p99 ms",
            "vassal us/delivery",
            "vassal CPU",
            "redis CPU",
            "load gen | pub",
            "machine busy",
        ],
        rows,
        notes,
    )
    two = results.get(2) if isinstance(results.get(2), dict) else None
    if one and two:
        summary = vassal_summary(one, two, args)
        for line in summary:
            print(line)
    return problems


def vassal_summary(one: dict[str, Any], two: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The two/one ratio where one vassal is pushed hardest (flat out, else the highest rate), and what saturated."""
    cores = os.cpu_count() or 1
    rate = 0.0 if 0 in args.rates else max(args.rates)
    p1, p2 = one["phases"].get(rate), two["phases"].get(rate)
    if not p1 or not p2 or not p1["rate"]:
        return []

    def shares(p: dict[str, Any]) -> tuple[list[float], float]:
        w: CpuWindow = p["window"]
        vassals = [w.share(v) for k, v in sorted(w.delta.items()) if k.startswith("vassal")]
        return vassals, (sum(w.delta.values()) + w.others) / w.wall if w.wall else float("nan")

    (lone,), busy1 = shares(p1)
    pair, busy2 = shares(p2)
    if lone > 0.9:
        limit = "the lone vassal saturated its core"
    elif busy1 > 0.9 * cores:
        limit = f"the machine saturated before the lone vassal did ({busy1:.2f} of {cores} CPUs busy)"
    else:
        limit = "neither the lone vassal nor the machine was saturated: publish faster"
    return [
        f"=> {rate_label(rate)}: one vassal {p1['rate']:,.0f} deliveries/s (uWSGI master + worker {100 * lone:.0f}% of a core), "
        f"two vassals {p2['rate']:,.0f} ({' + '.join(f'{100 * v:.0f}%' for v in pair)}; machine {busy2:.2f} of {cores} busy): "
        f"two/one = {p2['rate'] / p1['rate']:.2f}x (goal 1.8x); {limit}"
    ]


# -- (2) and (3): publishes/s ------------------------------------------------------------------


def count_requests() -> list[int]:
    """Count, in this process, what redis-py writes to Redis: [writes, of which ``COMMAND GETKEYS``].

    A write is one request and its wait for the replies (a pipeline's commands for one server go in one write).
    ``COMMAND GETKEYS`` is what redis-py's ClusterPipeline asks a node to learn a command's keys.
    """
    import redis.connection

    counts = [0, 0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        counts[0] += 1
        first = command[0] if isinstance(command, list) and command else command
        head = first[:64].encode("latin-1") if isinstance(first, str) else bytes(first[:64])
        if b"\r\nCOMMAND\r\n$7\r\nGETKEYS\r\n" in head:
            counts[1] += 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    return counts


def configure_django(url: str, history: bool) -> None:
    """Django settings for a publisher process: ``url`` as WS4REDIS_CONNECTION, the package's defaults otherwise."""
    import django
    from django.conf import settings

    extra: dict[str, Any] = {} if history else {"WS4REDIS_HISTORY_LENGTH": 0, "WS4REDIS_HISTORY_SECONDS": 0}
    settings.configure(
        SECRET_KEY="bench-only-not-secret", USE_TZ=True, INSTALLED_APPS=[], WS4REDIS_CONNECTION=url, WS4REDIS_PREFIX=None, **extra
    )
    django.setup()


def publish_loop(conn: Connection, url: str, history: bool, facilities: list[str]) -> None:
    """One publisher process of (2)/(3): ``RedisPublisher.publish_message`` in a loop, one facility after the other."""
    configure_django(url, history)
    from ws4redis_uwsgi.publisher import RedisPublisher

    publishers = [RedisPublisher(facility=f, broadcast=True) for f in facilities]
    for publisher in publishers:  # connections, the Cluster's slots and the script, before the clock starts
        publisher.publish_message(PAYLOAD)
    sent = count_requests()
    conn.send(("ready",))
    _, start_at, seconds = conn.recv()
    while time.monotonic() < start_at:
        time.sleep(0.0005)
    end = start_at + seconds
    cpu = time.process_time()
    ok = failed = 0
    failure = None
    n = len(publishers)
    while time.monotonic() < end:
        try:
            publishers[(ok + failed) % n].publish_message(PAYLOAD)
            ok += 1
        except Exception as exc:
            failed += 1
            failure = failure or f"{type(exc).__name__}: {exc}"
    conn.send(("done", ok, failed, failure, time.process_time() - cpu, sent[0], sent[1]))
    conn.close()


def commandstats(ports: list[int], command: str) -> dict[int, int]:
    """Calls of ``command`` so far on each server (``INFO commandstats``; scripts' own commands count too)."""
    import redis

    counts = {}
    for port in ports:
        with redis.Redis(port=port) as client:
            counts[port] = int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))
    return counts


def flush(ports: list[int]) -> None:
    import redis

    for port in ports:
        with redis.Redis(port=port) as client:
            client.flushall()


def run_publishers(
    args: argparse.Namespace, url: str, history: bool, redis_pids: list[int], masters: list[int]
) -> dict[str, Any]:
    """``args.publishers`` processes publishing for ``args.publish_seconds``: publishes/s and Redis CPU per publish."""
    context = multiprocessing.get_context("spawn")
    children: list[tuple[Connection, Any]] = []
    try:
        for i in range(args.publishers):
            parent, child = context.Pipe()
            facilities = [f"p{i}f{k}" for k in range(FACILITIES_PER_PUBLISHER)]
            proc = context.Process(target=publish_loop, args=(child, url, history, facilities), daemon=True)
            proc.start()
            child.close()
            children.append((parent, proc))
        for parent, proc in children:
            if not parent.poll(120):
                raise TimeoutError(f"publisher process {proc.pid} did not get ready")
            parent.recv()
        calls_before = commandstats(masters, "evalsha")
        start_at = time.monotonic() + 0.3
        for parent, _ in children:
            parent.send(("go", start_at, args.publish_seconds))
        window = CpuWindow({"redis": redis_pids, "publishers": [proc.pid for _, proc in children]})
        time.sleep(max(0.0, start_at - time.monotonic()))
        window.start()
        time.sleep(args.publish_seconds)
        window.stop()
        replies = []
        for parent, proc in children:
            if not parent.poll(60):
                raise TimeoutError(f"publisher process {proc.pid} did not finish")
            replies.append(parent.recv())
        calls_after = commandstats(masters, "evalsha")
    finally:
        for parent, proc in children:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            parent.close()
    ok = sum(r[1] for r in replies)
    return {
        "published": ok,
        "failed": sum(r[2] for r in replies),
        "failure": next((r[3] for r in replies if r[3]), None),
        "rate": ok / args.publish_seconds,
        "publisher_cpu": sum(r[4] for r in replies),
        "requests": sum(r[5] for r in replies),
        "getkeys": sum(r[6] for r in replies),
        "evalsha": {port: calls_after[port] - calls_before[port] for port in masters},
        "window": window,
    }


# -- (4) one publish to 1,000 users' channels --------------------------------------------------


def many_users_loop(conn: Connection, url: str, history: bool, users: int, count: int) -> None:
    """``count`` publishes to ``users`` users' channels, one message each; wall time and requests sent per publish."""
    configure_django(url, history)
    from ws4redis_uwsgi.publisher import RedisPublisher

    sent = count_requests()
    publisher = RedisPublisher(facility=FACILITY, users=[f"u{i}" for i in range(users)])
    channels = len(publisher._publishers)
    for _ in range(2):  # connections, slots, the script
        publisher.publish_message("x")
    conn.send(("ready",))
    conn.recv()
    walls, requests, getkeys = [], [], []
    failed, failure = 0, None
    cpu = time.process_time()
    for _ in range(count):
        before = list(sent)
        started = time.perf_counter()
        try:
            publisher.publish_message("x")
        except Exception as exc:
            failed += 1
            failure = failure or f"{type(exc).__name__}: {exc}"
        walls.append(time.perf_counter() - started)
        requests.append(sent[0] - before[0])
        getkeys.append(sent[1] - before[1])
    conn.send(("done", walls, requests, getkeys, failed, failure, time.process_time() - cpu, channels))
    conn.close()


def run_many_users(
    args: argparse.Namespace, url: str, history: bool, redis_pids: list[int], masters: list[int]
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(target=many_users_loop, args=(child, url, history, args.users, args.user_publishes), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(120):
            raise TimeoutError("the publisher process did not get ready")
        parent.recv()
        commands = ("evalsha", "spublish" if len(masters) > 1 else "publish")
        before = {c: commandstats(masters, c) for c in commands}
        window = CpuWindow({"redis": redis_pids, "publisher": [proc.pid]}).start()
        parent.send(("go",))
        if not parent.poll(300):
            raise TimeoutError("the publisher process did not finish")
        _, walls, requests, getkeys, failed, failure, cpu, channels = parent.recv()
        window.stop()
        after = {c: commandstats(masters, c) for c in commands}
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        parent.close()
    return {
        "count": len(walls),
        "channels": channels,
        "wall_ms": 1e3 * statistics.median(walls),
        "wall_p90_ms": 1e3 * sorted(walls)[int(0.9 * (len(walls) - 1))],
        "requests": statistics.median(requests),
        "requests_max": max(requests),
        "getkeys": statistics.median(getkeys),
        "calls": {c: {port: after[c][port] - before[c][port] for port in masters} for c in commands},
        "failed": failed,
        "failure": failure,
        "publisher_cpu": cpu,
        "window": window,
    }


# -- running (2), (3) and (4) on one Redis and on the Cluster ----------------------------------


@contextlib.contextmanager
def standalone(run_dir: Path) -> Iterator[tuple[str, list[int], list[int]]]:
    workdir = Path(tempfile.mkdtemp(prefix="standalone-", dir=run_dir))
    proc = RedisProcess(workdir).start()
    try:
        yield f"redis://127.0.0.1:{proc.port}/0", [proc.pid], [proc.port]
    finally:
        proc.stop()


@contextlib.contextmanager
def cluster() -> Iterator[tuple[str, list[int], list[int]]]:
    from tests.topologies import ClusterSet

    topology = ClusterSet().start()
    try:
        yield topology.url, [p.pid for p in topology.procs.values()], topology.masters()
    finally:
        topology.stop()


def figure_publishes(args: argparse.Namespace, run_dir: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], list[str]]:
    """(2), (3) and (4): one Redis, then the Cluster."""
    results: dict[str, Any] = {}
    targets: list[tuple[str, Callable[[], contextlib.AbstractContextManager[tuple[str, list[int], list[int]]]]]] = [
        ("one Redis", lambda: standalone(run_dir)),
        ("Cluster 3+3", cluster),
    ]
    for name, make in targets:
        log(f"(2)-(4) {name} ...")
        try:
            with make() as (url, pids, masters):
                results[name] = {"pids": len(pids), "masters": masters}
                for history in (True, False):
                    if "2" in args.figures or "3" in args.figures:
                        flush(masters)
                        results[name][("publishes", history)] = run_publishers(args, url, history, pids, masters)
                for history in (True, False):
                    if "4" in args.figures:
                        flush(masters)
                        results[name][("users", history)] = run_many_users(args, url, history, pids, masters)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            results[name] = Failure.of("failed", exc)
    problems: list[str] = []
    if "2" in args.figures or "3" in args.figures:
        problems += table_publishes(results, args)
    if "4" in args.figures:
        problems += table_many_users(results, args)
    return results, problems


def us(seconds: float, count: int) -> str:
    return fmt_num(1e6 * seconds / count, 1) if count else "-"


def table_publishes(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Tables (2) and (3); returns the problems that fail the run."""
    problems: list[str] = []
    cores = os.cpu_count() or 1
    base = results.get("one Redis")
    base_on = base.get(("publishes", True)) if isinstance(base, dict) else None
    rows2: list[list[str]] = []
    rows3: list[list[str]] = []
    notes2: list[str] = []
    per_channel: list[str] = []
    for name, res in results.items():
        if not isinstance(res, dict):
            problems.append(f"(2) {name}: {res}")
            notes2.append(f"{name}: {res}")
            rows2.append([name, res.cell() if isinstance(res, Failure) else str(res), *[""] * 9])
            continue
        for history in (True, False):
            r = res.get(("publishes", history))
            if r is None:
                continue
            w: CpuWindow = r["window"]
            n = r["published"]
            if r["failed"]:
                problems.append(
                    f"(2) {name}, history {'on' if history else 'off'}: {r['failed']} publishes failed: {r['failure']}"
                )
            busy = (sum(w.delta.values()) + w.others) / w.wall if w.wall else float("nan")
            spread = " / ".join(f"{c:,}" for c in r["evalsha"].values()) if len(res["masters"]) > 1 else ""
            row3 = [
                name,
                "on" if history else "off",
                fmt_num(r["rate"]),
                us(w.delta["redis"], n),
                pct(w.share(w.delta["redis"])),
                us(r["publisher_cpu"], n),
            ]
            rows3.append(row3)
            if history:
                channels = args.publishers * FACILITIES_PER_PUBLISHER
                per_channel.append(
                    f"{name}, history on: {n / channels:,.0f} publishes per channel ({channels} channels); "
                    "each stream is trimmed from its 1,001st entry on"
                )
            if history:
                ratio = f"{r['rate'] / base_on['rate']:.2f}x" if base_on and base_on["rate"] and r is not base_on else ""
                rows2.append(
                    [
                        name,
                        f"{args.publishers} x {FACILITIES_PER_PUBLISHER}",
                        fmt_num(r["rate"]),
                        ratio,
                        f"{r['failed']:,}",
                        us(w.delta["redis"], n),
                        f"{w.share(w.delta['redis']):.2f} ({res['pids']} procs)",
                        us(r["publisher_cpu"], n),
                        f"{r['requests'] / n:.2f}" if n else "-",
                        f"{busy:.2f} of {cores}" + (f" (others {w.share(w.others):.2f})" if w.others > 0.1 * w.wall else ""),
                        spread,
                    ]
                )
    notes2.append(
        f"{args.publishers} publisher processes x {FACILITIES_PER_PUBLISHER} facilities each (one broadcast channel per "
        f"facility, no subscriber), RedisPublisher.publish_message() in a loop for {args.publish_seconds:g} s; "
        "publishes/s: those that returned without an error; requests/pub: writes to Redis per publish, counted in redis-py"
    )
    notes2.append(
        "Redis CPU: utime+stime of every redis-server of the target (the Cluster's replicas too) from /proc over the run; "
        "in cores (1.00 = one core busy) and per publish"
    )
    notes2.append(
        f"goal 2.5x assumes the Cluster's masters on cores of their own: here its 6 redis-servers and the publishers share the "
        f"same {cores} CPUs as one redis-server and the publishers do in the other row, so the ratio shows the Cluster's "
        "overhead on one machine, not its scale-out; the goal cannot be reached on this machine"
    )
    print_table(
        "(2) publishes/s with history on: a three-master Redis Cluster (a replica each) against one Redis",
        [
            "target",
            "publishers",
            "publishes/s",
            "cluster/one",
            "failed",
            "redis us/pub",
            "redis CPU",
            "publisher us/pub",
            "requests/pub",
            "machine busy",
            "script calls per master",
        ],
        rows2,
        notes2,
    )
    print_table(
        "(3) Redis CPU per publish, history on and off (same runs as (2), and the same again with history off)",
        ["target", "history", "publishes/s", "redis us/publish", "redis CPU", "publisher us/pub"],
        rows3,
        [
            "history on: WS4REDIS_HISTORY_LENGTH=1000, WS4REDIS_HISTORY_SECONDS=3600 (the defaults; one Lua script per publish, "
            "XADD + trim + PUBLISH + SET); off: both 0 (PUBLISH + SET in one pipeline)",
            *per_channel,
        ],
    )
    return problems


def table_many_users(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    problems: list[str] = []
    rows: list[list[str]] = []
    notes: list[str] = []
    for name, res in results.items():
        if not isinstance(res, dict):
            problems.append(f"(4) {name}: {res}")
            rows.append([name, res.cell() if isinstance(res, Failure) else str(res), *[""] * 7])
            continue
        for history in (True, False):
            r = res.get(("users", history))
            if r is None:
                continue
            w: CpuWindow = r["window"]
            if r["failed"]:
                problems.append(
                    f"(4) {name}, history {'on' if history else 'off'}: {r['failed']} publishes failed: {r['failure']}"
                )
            if r["getkeys"]:
                notes.append(
                    f"{name}, history {'on' if history else 'off'}: redis-py's ClusterPipeline sent COMMAND GETKEYS for each of "
                    f"the {r['channels']:,} pipelined EVALSHA, one round trip each, before the {r['requests'] - r['getkeys']:g} "
                    "writes (one per master): the publish is pipelined per shard only after a round trip per channel"
                )
            per_master = {c: " / ".join(f"{v / r['count']:,.0f}" for v in calls.values()) for c, calls in r["calls"].items()}
            rows.append(
                [
                    name,
                    "on" if history else "off",
                    f"{r['channels']:,}",
                    f"{r['wall_ms']:.1f} ({r['wall_p90_ms']:.1f})",
                    f"{r['requests']:g}" + (f" ({r['getkeys']:g} GETKEYS)" if r["getkeys"] else ""),
                    per_master["evalsha"],
                    next(v for c, v in per_master.items() if c != "evalsha"),
                    fmt_num(1e3 * w.delta["redis"] / r["count"], 2),
                    fmt_num(1e3 * r["publisher_cpu"] / r["count"], 2),
                ]
            )
    notes.append(
        f"RedisPublisher(facility={FACILITY!r}, users=[u0 ... u{args.users - 1}]).publish_message('x'), "
        f"{args.user_publishes} times after 2 warm-ups; wall: median (90th percentile)"
    )
    notes.append(
        "requests: writes to Redis per publish (median), each followed by a wait for its replies, counted in redis-py "
        "(AbstractConnection.send_packed_command); a pipeline's commands for one server go in one write"
    )
    notes.append(
        "script calls and (S)PUBLISH per publish, per master, from INFO commandstats (commands run by the scripts count too)"
    )
    print_table(
        f"(4) one publish to {args.users:,} users' channels, one message each",
        [
            "target",
            "history",
            "channels",
            "wall ms",
            "requests",
            "EVALSHA per master",
            "(S)PUBLISH per master",
            "redis CPU ms",
            "publisher CPU ms",
        ],
        rows,
        notes,
    )
    return problems


# -- main ---------------------------------------------------------------------------------------


def configuration() -> str:
    from importlib.metadata import version

    import redis

    sys.path.insert(0, str(REPO))
    from ws4redis_uwsgi.settings import DEFAULTS

    keys = ("WS4REDIS_HISTORY_LENGTH", "WS4REDIS_HISTORY_SECONDS", "WS4REDIS_EXPIRE", "WS4REDIS_WAIT_REPLICAS")
    exe = shutil.which("redis-server") or "redis-server"
    return (
        f"ws4redis_uwsgi {version('ws4redis-uwsgi')} ({REPO}), Django {version('Django')}, redis-py {redis.__version__}, "
        f"uWSGI {version('uWSGI')}, gevent {version('gevent')}; {exe}; defaults: " + ", ".join(f"{k}={DEFAULTS[k]}" for k in keys)
    )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    raise_open_files(args.clients // max(1, args.procs) + 2000)
    mode = "--quick" if args.quick else "full run"
    print(f"scale-out benchmark on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {mode}")
    print(configuration())
    print(
        f"vassals: uWSGI, one worker under gevent each, --module ws4redis_uwsgi.wsgi_websocket:application, {SETTINGS}; "
        f"load generator: {args.procs} client processes (bench/wsclient.py on {loop_name()})",
        flush=True,
    )

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {text}", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="ws4redis-scaleout-"))
    keep = args.keep
    problems: list[str] = []
    try:
        if "1" in args.figures:
            _, found = figure_vassals(args, run_dir, log)
            problems += found
        if args.figures & {"2", "3", "4"}:
            _, found = figure_publishes(args, run_dir, log)
            problems += found
    finally:
        stop_all_and_clean(run_dir, keep or bool(problems))
    return exit_status(started, problems)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 2 minutes")
    parser.add_argument("--figures", default="1,2,3,4", help="comma-separated among 1, 2, 3, 4 (default: all)")
    parser.add_argument("--clients", type=int, default=2000, help="(1) clients, split over the vassals (default 2,000)")
    parser.add_argument("--rates", help="(1) msg/s per phase, 0: flat out (default 50,100,150,0; quick 50,150,0)")
    parser.add_argument("--seconds", type=float, help="(1) seconds of publishing per rate (default 5; quick 2)")
    parser.add_argument("--flat-out-messages", type=int, help="(1) messages of the flat-out phase (default 600; quick 300)")
    parser.add_argument("--drain", type=float, default=30.0, help="(1) seconds to wait for deliveries after publishing")
    parser.add_argument("--concurrency", type=int, default=200, help="(1) handshakes in flight while opening clients")
    parser.add_argument("--procs", type=int, default=2, help="(1) client processes, split over the vassals (default 2)")
    parser.add_argument("--publishers", type=int, default=4, help="(2)/(3) publisher processes (default 4)")
    parser.add_argument("--publish-seconds", type=float, help="(2)/(3) seconds of publishing per run (default 15; quick 3)")
    parser.add_argument("--users", type=int, default=1000, help="(4) users' channels per publish (default 1,000)")
    parser.add_argument("--user-publishes", type=int, help="(4) publishes measured (default 60; quick 10)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher:
        return args
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 5.0
    if args.flat_out_messages is None:
        args.flat_out_messages = 300 if args.quick else 600
    if args.publish_seconds is None:
        args.publish_seconds = 3.0 if args.quick else 15.0
    if args.user_publishes is None:
        args.user_publishes = 10 if args.quick else 60
    args.rates = parse_rates(parser, args.rates, "50,150,0" if args.quick else "50,100,150,0")
    args.figures = {f.strip() for f in args.figures.split(",") if f.strip()}
    if args.figures - {"1", "2", "3", "4"}:
        parser.error(f"unknown figures: {', '.join(sorted(args.figures - {'1', '2', '3', '4'}))}")
    positive = [
        ("--clients", args.clients),
        ("--procs", args.procs),
        ("--publishers", args.publishers),
        ("--seconds", args.seconds),
        ("--publish-seconds", args.publish_seconds),
        ("--users", args.users),
        ("--user-publishes", args.user_publishes),
        ("--flat-out-messages", args.flat_out_messages),
    ]
    wrong = [f"{option} {value:g}" for option, value in positive if not value > 0]
    if wrong or any(not r >= 0 for r in args.rates):
        parser.error(f"counts and seconds must be positive, rates not negative: {', '.join(wrong) or args.rates}")
    if args.procs % 2:
        parser.error("--procs must be even: the two vassals get the same number of client processes")
    return args


def main() -> int:
    args = parse_args()
    if args.publisher:
        return publisher_main()
    return run_stopping_all(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
