"""The scenarios: what each does to one peer and what it measures (the tables are in report.py).

(a) broadcast fan-out to N clients at increasing publish rates: deliveries/s,
    lost deliveries, p50/p99 publish-to-receive latency;
(b) server CPU per delivered message, same phases (utime+stime from
    ``/proc`` of the server's processes only; Redis shown apart);
(c) many idle connections: server RSS per connection, and the server's CPU
    over an idle window that contains a full round of keep-alive pings;
    ws4redis 0.6 waits in ``select()`` with two descriptors per socket (its
    own Redis connection), so it keeps only the sockets whose descriptors
    stay below 1024: the table records how many it held;
(d) a burst of connections opened as fast as the client can: handshakes/s and
    server CPU per handshake.
"""

from __future__ import annotations

import argparse
import time
from array import array
from pathlib import Path
from typing import Any

from loadgen import IDLE_TIMEOUT, ClientPool, client_processes
from processes import CpuWindow, proc_fds, proc_rss_kib, wait_until
from systems import BASELINE, EnvInfo, Publisher, Stack


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))])


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
            out["phases"][rate] = fanout_phase(stack.pool, stack.publisher, stack.cpu_groups(), phase, rate, messages, args.drain)
        out["notes"].extend(stack.findings())
    return out


def fanout_phase(
    pool: ClientPool, publisher: Publisher, groups: dict[str, list[int]], phase: int, rate: float, messages: int, drain: float
) -> dict[str, Any]:
    """One fan-out phase: publish ``messages`` at ``rate`` (0: flat out), wait for the deliveries, count them.

    The CPU window covers ``groups``; the wait ends when every client process is done, or ``drain`` seconds
    after it began, or ``IDLE_TIMEOUT`` seconds without a delivery.
    """
    live, _ = pool.status()
    pool.forget("done")
    pool.ask("expecting", "expect", phase, messages)
    window = CpuWindow(groups).start()
    publish_timeout = (messages / rate if rate else 0) + 60
    sent = publisher.call(publish_timeout, cmd="run", phase=phase, messages=messages, rate=rate)
    progress = [0] * len(pool.conns)
    last_change = [time.monotonic()]

    def on_progress(index: int, reply: tuple) -> None:
        if reply[1] != progress[index]:
            progress[index] = reply[1]
            last_change[0] = time.monotonic()

    cutoff = time.monotonic() + drain
    timed_out = False
    while True:
        # A "done" that comes in a call that times out stays in the pool for the next call.
        try:
            pool.collect("done", 1.0, on_progress)
            break
        except TimeoutError:
            if time.monotonic() - last_change[0] >= IDLE_TIMEOUT or time.monotonic() > cutoff:
                timed_out = True
                pool.send("stop")
                pool.collect("done", 30, on_progress)
                break
    window.stop()
    results = [r[1] for r in pool.ask("results", "results", timeout=120)]
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
    return {
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
        "publish_failed": sent.get("failed", 0),
        "publish_failure": sent.get("failure"),
        "timed_out": timed_out,
        "closed": closed,
        "window": window,
    }


def run_idle(env: EnvInfo, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Scenario (c): many idle websockets; memory per connection, how many the server keeps, and what keep-alive costs.

    The websockets are opened in steps of ``--idle-step``; after each the harness checks the server:
    opening stops early when the server exited, its RSS passed ``--idle-rss-limit`` MiB, or it held
    fewer than half of the websockets opened so far (a peer that cannot hold them would otherwise take
    minutes, or gigabytes, to show it). Then, with ``--keepalive-window`` seconds, the server's CPU
    over that long an idle window: no message is published, so what it spends is keep-alive (pings
    sent, pongs read, the rounds that decide them) and its idle loop. The window should be longer
    than the ping interval plus ws4redis_uwsgi's round (30 + 5 s by default), so that every websocket
    is pinged in it; the pings the clients answered are counted.
    """
    out: dict[str, Any] = {"notes": []}
    procs = client_processes(args.idle, args.procs)
    with Stack(env, run_dir, args.idle, procs, idle=True) as stack:
        assert stack.pool is not None and stack.server is not None and stack.redis is not None
        rss_before, redis_before, fds_before = stack.server.rss_kib(), proc_rss_kib(stack.redis.pid), stack.server.fds()
        asked = opened_count = 0
        errors: dict[str, int] = {}
        open_s = 0.0
        while asked < args.idle:
            count = min(args.idle_step, args.idle - asked)
            opened = stack.pool.open(count, args.concurrency, 120 + count / 20)
            asked += count
            opened_count += opened["opened"]
            open_s += opened["seconds"] if opened["opened"] else 0.0
            for key, value in opened["errors"].items():
                errors[key] = errors.get(key, 0) + value
            if asked >= args.idle:
                break
            stop = _stop_opening(stack, asked, args.idle_rss_limit)
            if stop:
                out["notes"].append(f"stopped opening after {asked:,} of {args.idle:,}: {stop}")
                break
        time.sleep(2.0)
        held, codes = stack.pool.status()
        got_broadcast, still_open = stack.warm_all(timeout=20)
        time.sleep(1.0)
        rss_after, redis_after, fds_after = stack.server.rss_kib(), proc_rss_kib(stack.redis.pid), stack.server.fds()
        redis_clients = stack.redis.clients()
        keepalive: dict[str, Any] | None = None
        if args.keepalive_window > 0 and stack.server.alive():
            pings_before = stack.pool.pings()
            window = CpuWindow(stack.cpu_groups()).start()
            time.sleep(args.keepalive_window)
            window.stop()
            pings = stack.pool.pings() - pings_before
            held_after, _ = stack.pool.status()
            # After a ping round, every websocket has answered once: what that left behind counts too.
            rss_pinged = stack.server.rss_kib()
            keepalive = {
                "window": window,
                "pings": pings,
                "held": held_after,
                "per_conn": (rss_pinged - rss_before) / held_after if held_after else float("nan"),
            }
        out.update(
            redis_clients=redis_clients,
            requested=args.idle,
            asked=asked,
            procs=procs,
            opened=opened_count,
            errors=errors,
            open_s=open_s,
            held=held,
            closed_codes=codes,
            got_broadcast=got_broadcast,
            rss_before=rss_before,
            rss_after=rss_after,
            per_conn=(rss_after - rss_before) / held if held else float("nan"),
            redis_per_conn=(redis_after - redis_before) / held if held else float("nan"),
            fds_before=fds_before,
            fds_after=fds_after,
            max_fd=stack.server.max_fd,
            keepalive=keepalive,
        )
        if still_open != held:
            out["notes"].append(f"{held - still_open} more closed while the harness checked the others with a broadcast")
        out["notes"].extend(stack.findings())
    return out


def _stop_opening(stack: Stack, asked: int, rss_limit_mib: float) -> str | None:
    """Why the idle scenario opens no more websockets after ``asked`` of them, or None to go on."""
    assert stack.server is not None and stack.pool is not None
    if not stack.server.alive():
        return "the server exited"
    rss = stack.server.rss_kib() / 1024
    if rss > rss_limit_mib:
        return f"the server's RSS is {rss:,.0f} MiB, over --idle-rss-limit {rss_limit_mib:,.0f}"
    held, _ = stack.pool.status()
    if held < asked / 2:
        return f"the server holds {held:,} of them"
    return None


def run_burst(env: EnvInfo, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Scenario (d): open a burst of websockets as fast as the client can; handshakes per second and their CPU.

    Three times: anonymous clients (no cookie); logged-in clients, each with
    the session cookie of a different user, so every handshake looks up a
    session, a user and groups in the database (SQLite, in the server's
    process); then the same logged-in clients again, right after they all
    closed, as browsers do when their users go to another page of the site.
    ws4redis_uwsgi once more with other users whose cookies carry the
    identity claims their pages gave them (:mod:`ws4redis_uwsgi.django.identity_claim`).
    """
    results = {"anonymous": _burst(env, args, run_dir, 0)[0]}
    results["logged in"], results["logged in, again"] = _burst(env, args, run_dir, args.burst, again=True)
    if env.spec.name == BASELINE:
        results[FROM_A_PAGE] = _burst(env, args, run_dir, args.burst, claims=True)[0]
    return results


#: The burst of logged-in first visits whose cookies carry their pages' identity claims.
FROM_A_PAGE = "logged in, from a page"


def _burst(
    env: EnvInfo, args: argparse.Namespace, run_dir: Path, users: int, again: bool = False, claims: bool = False
) -> list[dict[str, Any]]:
    outs: list[dict[str, Any]] = []
    with Stack(env, run_dir, args.burst, args.procs, users=users, claims=claims) as stack:
        assert stack.pool is not None
        server_pids = stack.cpu_groups()["server"]
        settled = sum(proc_fds(pid) for pid in server_pids) + 10 + args.burst // 100
        for _ in range(2 if again else 1):
            if outs:
                # Closed on both ends (the server let go of the sockets) before the next window opens.
                stack.pool.close_all()
                wait_until(lambda: sum(proc_fds(pid) for pid in server_pids) <= settled, 60, "the server to let the sockets go")
            out: dict[str, Any] = {"notes": []}
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
            outs.append(out)
    return outs
