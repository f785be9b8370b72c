"""The tables: every peer's figure with its ratio to ws4redis_uwsgi, the load generator's CPU, and notes.

The notes say what a figure alone would hide: failed handshakes, websockets
the server closed, lost, repeated or late deliveries, errors in the server's
log, and a client process or a machine that was saturated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from loadgen import IDLE_TIMEOUT
from processes import CpuWindow
from scenarios import FROM_A_PAGE
from systems import BASELINE, Failure


def exit_status(started: float, problems: list[str]) -> int:
    """The run's total time and each problem printed; 1 when there is one, else 0."""
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


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


def failure_cell(name: str, res: Any, notes: list[str]) -> str:
    """The short cell of a peer without figures; its full error goes into ``notes``, once."""
    note = f"{name}: {res}"
    if note not in notes:
        notes.append(note)
    return res.cell() if isinstance(res, Failure) else str(res)


def client_shares(window: CpuWindow) -> list[float]:
    return [window.share(v) for k, v in sorted(window.delta.items()) if k.startswith("client")]


def loadgen_cpu(window: CpuWindow) -> str:
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
                cell = failure_cell(name, res, notes_a)
                rows_a.append([f"{rate:g}", name, cell, *[""] * 7])
                rows_b.append([f"{rate:g}", name, cell, *[""] * 5])
                see_a = f"{name}: no figures, the error is below table (a)"
                if see_a not in notes_b:
                    notes_b.append(see_a)
                continue
            p = res["phases"].get(rate)
            if p is None:
                rows_a.append([f"{rate:g}", name, "no phase", *[""] * 7])
                rows_b.append([f"{rate:g}", name, "no phase", *[""] * 6])
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
                    loadgen_cpu(w),
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
                    fmt_num(per(w.kernel.get("server", float("nan"))), 1),
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
    notes_b.append(
        "of which kernel: the server's stime alone; on loopback the kernel's TCP path for every write "
        "(the receiver's side included) is charged to the writer, and no code in the server can go below it"
    )
    print_table(
        "(b) CPU per delivered message, same phases (microseconds; ratio: peer / ws4redis_uwsgi)",
        [
            "msg/s",
            "peer",
            "server us",
            "of which kernel",
            "redis us",
            "server+redis us",
            "server CPU / wall",
            "load gen us",
            "deliveries",
        ],
        rows_b,
        notes_b,
    )


def table_idle(results: dict[str, Any], args: argparse.Namespace) -> None:
    base = results.get(BASELINE) if isinstance(results.get(BASELINE), dict) else None
    base_ka = base["keepalive"] if base else None
    rows: list[list[str]] = []
    notes: list[str] = []
    for name, res in results.items():
        if not isinstance(res, dict):
            rows.append([name, failure_cell(name, res, notes), *[""] * 12])
            continue
        ka = res["keepalive"]
        ka_cells = ["-", "-", "-", "-"]
        if ka is not None:
            w: CpuWindow = ka["window"]
            share = w.share(w.delta["server"])
            per_ping = 1e6 * w.delta["server"] / ka["pings"] if ka["pings"] else float("nan")
            base_share = base_ka["window"].share(base_ka["window"].delta["server"]) if base_ka else None
            ka_cells = [
                fmt_num(ka["per_conn"], 2),
                f"{ka['pings']:,}",
                f"{100 * share:.2f}% {fmt_ratio(share, base_share)}".strip(),
                fmt_num(per_ping, 1),
            ]
            if ka["held"] < res["held"]:
                notes.append(f"{name}: {res['held'] - ka['held']:,} websockets closed during the keep-alive window")
            if ka["pings"] < ka["held"]:
                notes.append(f"{name}: {ka['pings']:,} pings answered in the window, fewer than the {ka['held']:,} websockets")
            notes.extend(saturation_notes(name, w, "keep-alive window"))
        rows.append(
            [
                name,
                f"{res['opened']:,}/{res['requested']:,}",
                f"{res['held']:,}",
                f"{res['got_broadcast']:,}",
                f"{res['rss_before'] / 1024:.1f} -> {res['rss_after'] / 1024:.1f}",
                with_ratio(res["per_conn"], base and base["per_conn"], 2),
                f"{res['redis_clients']:,}",
                fmt_num(res["redis_per_conn"], 1),
                f"{res['fds_before']:,} -> {res['fds_after']:,}",
                fmt_num(res["open_s"], 1),
                *ka_cells,
            ]
        )
        if res["errors"]:
            notes.append(f"{name}: handshakes failed: {res['errors']}")
        if res["closed_codes"]:
            notes.append(f"{name}: closed by the server after the handshake, by close code: {res['closed_codes']}")
        if res["held"] < res["requested"] and res["max_fd"] < res["requested"] + 100:
            notes.append(
                f"{name}: its max-fd was {res['max_fd']:,}, the hard limit on open files (ulimit -Hn) of this machine: "
                f"one process cannot hold {res['requested']:,} websockets here"
            )
        notes.extend(f"{name}: {n}" for n in res["notes"])
    notes.append("redis conns: connections Redis holds with the websockets open, the publisher's included")
    notes.append(
        "KiB/conn: growth of the server's RSS (uWSGI master + worker, or daphne) while the clients connected, "
        "divided by the websockets held"
    )
    if args.keepalive_window > 0:
        notes.append(
            f"keep-alive: the server's CPU (utime+stime) over {args.keepalive_window:g} s with every websocket idle, "
            "as a share of one core; pings: those the clients answered in that window; us/ping: server CPU per ping; "
            "KiB/conn pinged: the same growth of RSS after that window"
        )
        if base_ka is not None and base_ka["held"]:
            w = base_ka["window"]
            share = w.share(w.delta["server"])
            notes.append(
                f"{BASELINE}: at {100_000:,} websockets, keep-alive at this cost per websocket would use "
                f"{100 * share * 100_000 / base_ka['held']:.2f}% of a core (linear in the websockets; goal under 5%)"
            )
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
            "KiB/conn pinged",
            "pings",
            "keep-alive CPU",
            "us/ping",
        ],
        rows,
        notes,
    )


def table_burst(results: dict[str, Any], args: argparse.Namespace) -> None:
    rows: list[list[str]] = []
    notes: list[str] = []
    for mode in ("anonymous", "logged in", "logged in, again", FROM_A_PAGE):
        base = results.get(BASELINE)
        base = base.get(mode) if isinstance(base, dict) else None
        for name, by_mode in results.items():
            if mode == FROM_A_PAGE and name != BASELINE:
                continue  # the peers have no claims: their first visits are "logged in"
            res = by_mode.get(mode) if isinstance(by_mode, dict) else by_mode
            if not isinstance(res, dict):
                rows.append([mode, name, failure_cell(name, res, notes), *[""] * 6])
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
                    loadgen_cpu(w),
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
        "logged in: a session cookie of a different user per client, each user in 2 of 10 groups, "
        "subscribe-broadcast&subscribe-user&subscribe-group; sessions, users and groups in SQLite (Django's db sessions)"
    )
    notes.append("logged in, again: the same clients once more, right after all of them closed (a page change of each user)")
    notes.append(
        f"{FROM_A_PAGE}: other users' first visits, each cookie with the identity claim its page gave it "
        "(ws4redis_uwsgi.django.identity_claim; made by the pages' side before the burst, not in the server's CPU)"
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
