"""Peers: ws4redis_uwsgi against django-websocket-redis 0.6 and Django Channels 4, same load generator.

Three systems (``systems.py``), each in a virtual environment of its own
(built under ``bench/.envs/`` on the first run and reused afterwards) and each
with a redis-server of its own, on loopback, in the same run, driven by the
same client processes (``loadgen.py``, ``wsclient.py``). Scenarios
(``scenarios.py``), each printed as one table with every peer's figure and its
ratio to ws4redis_uwsgi, and the load generator's own CPU (``report.py``):

(a) broadcast fan-out to N clients at increasing publish rates (with the
    bare hub of ``peersite/wsgi_bare_hub.py``, the goal's floor);
(b) server CPU per delivered message, same phases;
(c) many idle connections: server RSS per connection, and keep-alive's CPU;
(d) a burst of connections opened as fast as the client can.

Usage (from the repository root)::

    python bench/peers.py [--quick] [--peers ws4redis_uwsgi,bare-hub,ws4redis-0.6,channels-4]
                          [--scenarios a,c,d] [--idle 100000] [--rebuild] [--keep]

A peer that cannot be installed or started is reported as such in the tables;
every server this starts is stopped at the end, also on Ctrl-C. The exit
status is 1 when ws4redis_uwsgi failed a scenario or lost, repeated or
reordered a message. In a peer's environment this file is also the publisher
helper (``--publisher``) and fills the logged-in users' database
(``--make-sessions``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadgen import ORIGIN, client_processes, loop_name
from processes import raise_open_files, run_stopping_all, stop_all_and_clean
from report import exit_status, table_burst, table_fanout, table_idle
from scenarios import run_burst, run_fanout, run_idle
from systems import BASELINE, PEERS, EnvInfo, Failure, build_env, make_claims_main, make_sessions_main, publisher_main


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    raise_open_files(max(n // client_processes(n, args.procs) for n in (args.idle, args.burst, args.clients)) + 1000)

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
                if key not in info.spec.scenarios:
                    continue
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
                    results[info.spec.name] = Failure.of("failed", exc)
            table(results, args)
            problems.extend(baseline_problems(key, results.get(BASELINE)))
    finally:
        stop_all_and_clean(run_dir, keep)
    return exit_status(started, problems)


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


def parse_rates(parser: argparse.ArgumentParser, given: str | None, default: str) -> list[float]:
    """``--rates``: the comma-separated numbers given, or ``default``'s; a parser error when they are not numbers."""
    try:
        return [float(r) for r in (given if given is not None else default).split(",")]
    except ValueError:
        parser.error(f"--rates: not a comma-separated list of numbers: {given!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run: 300 clients, 2,000 idle, 500 in the burst, 2 s per rate"
    )
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS), help="comma-separated peers (default: all)")
    parser.add_argument("--scenarios", default="a,c,d", help="comma-separated among a (with b), c, d (default: all)")
    parser.add_argument("--clients", type=int, help="fan-out clients (default 1,000; quick 300)")
    parser.add_argument("--rates", help="publish rates in msg/s, comma-separated (default 10,50,100,200)")
    parser.add_argument("--seconds", type=float, help="seconds of publishing per rate (default 4; quick 2)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for deliveries after publishing (default 30)")
    parser.add_argument("--idle", type=int, help="idle connections (default 10,000; quick 2,000)")
    parser.add_argument(
        "--idle-step", type=int, default=10000, help="idle connections opened between two checks of the server (default 10,000)"
    )
    parser.add_argument(
        "--idle-rss-limit",
        type=float,
        default=2048,
        help="MiB of server RSS past which the idle scenario opens no more connections (default 2,048)",
    )
    parser.add_argument(
        "--keepalive-window",
        type=float,
        help="seconds of idle connections over which keep-alive CPU is measured (default 40, past one ping round; quick 0: none)",
    )
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
    parser.add_argument("--make-claims", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher or args.make_sessions or args.make_claims:
        return args
    # None is "not given"; a 0 given is refused below, not replaced by the default.
    if args.clients is None:
        args.clients = 300 if args.quick else 1000
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 4.0
    if args.idle is None:
        args.idle = 2000 if args.quick else 10000
    if args.burst is None:
        args.burst = 500 if args.quick else 2000
    if args.keepalive_window is None:
        args.keepalive_window = 0.0 if args.quick else 40.0
    args.rates = parse_rates(parser, args.rates, "10,50,100,200")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.scenarios = {s.strip() for s in args.scenarios.split(",")}
    unknown = set(args.peers) - {p.name for p in PEERS}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    positive = [
        ("--clients", args.clients),
        ("--idle", args.idle),
        ("--idle-step", args.idle_step),
        ("--idle-rss-limit", args.idle_rss_limit),
        ("--burst", args.burst),
        ("--procs", args.procs),
        ("--concurrency", args.concurrency),
        ("--burst-concurrency", args.burst_concurrency),
        ("--seconds", args.seconds),
        *(("--rates", rate) for rate in args.rates),
    ]
    wrong = [f"{option} {value:g}" for option, value in positive if not value > 0]  # not > 0: NaN too
    if wrong:
        parser.error(f"counts, rates and seconds must be positive: {', '.join(wrong)}")
    if not args.drain >= 0:
        parser.error(f"--drain must not be negative: {args.drain:g}")
    if not args.keepalive_window >= 0:
        parser.error(f"--keepalive-window must not be negative: {args.keepalive_window:g}")
    return args


def main() -> int:
    args = parse_args()
    if args.publisher:
        return publisher_main(args.publisher)
    if args.make_sessions:
        return make_sessions_main(args.make_sessions)
    if args.make_claims:
        return make_claims_main()
    return run_stopping_all(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
