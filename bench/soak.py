"""Soak: thousands of resuming clients on one uWSGI worker for minutes, counting every message.

    python bench/soak.py [--clients 3000] [--minutes 5] [--rate 50] [--facilities 10] [--churn 0.02]

Starts its own redis-server and one websocket worker (tests/servers.py).
Each client subscribes to one of the facilities with ``resume`` and checks
that the numbered messages of its facility arrive exactly once and in order;
with ``--churn`` a fraction of the clients drops its connection every few
seconds and resumes with its last id. The worker's memory is sampled every
10 s. Exit status 1 when a message was lost, repeated or reordered, or when
the worker's memory grew after the warm-up. Not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ORIGIN = "http://127.0.0.1"


def client_process(url: str, facilities: list[str], indexes: list[int], churn: float, stop_at: float, out) -> None:
    """Run the clients numbered ``indexes``; send back one report per client."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    async def one(index: int) -> dict:
        facility = facilities[index % len(facilities)]
        state = {"facility": facility, "received": 0, "last": -1, "anomalies": 0, "gaps": 0, "reconnects": -1}
        last_id = ""
        while time.time() < stop_at:
            state["reconnects"] += 1
            try:
                uri = f"{url}/ws/{facility}?subscribe-broadcast&resume={last_id}"
                async with connect(uri, origin=ORIGIN, open_timeout=60, close_timeout=2, ping_interval=None) as ws:
                    while time.time() < stop_at:
                        try:
                            frame = await asyncio.wait_for(ws.recv(), max(0.1, stop_at - time.time()))
                        except TimeoutError:
                            break
                        header, _, payload = frame.partition("\n")
                        if header == "!gap":
                            state["gaps"] += 1
                            continue
                        last_id = header or last_id
                        number = int(payload)
                        if number != state["last"] + 1:
                            state["anomalies"] += 1
                        state["last"] = max(state["last"], number)
                        state["received"] += 1
                        if churn and random.random() < churn:
                            break  # drop this connection; the next one resumes after last_id
            except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
                await asyncio.sleep(0.2)
        return state

    async def main() -> list[dict]:
        results = []
        for start in range(0, len(indexes), 200):  # stagger the opening handshakes
            results.append(asyncio.gather(*(one(i) for i in indexes[start : start + 200])))
            await asyncio.sleep(0.3)
        return [state for batch in await asyncio.gather(*results) for state in batch]

    out.put(asyncio.run(main()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=float, default=50, help="messages per second, all facilities together")
    parser.add_argument("--facilities", type=int, default=10)
    parser.add_argument("--churn", type=float, default=0.0, help="chance per message that a client drops and resumes")
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="ws4redis-soak-"))
    from tests.servers import RedisServer, UwsgiServer

    redis_server = RedisServer(workdir=workdir).start()
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.testsite.settings",
        "WS4REDIS_TEST_DB": str(workdir / "site.sqlite3"),
        "WS4REDIS_TEST_REDIS": redis_server.url,
    }
    os.environ.update(env)
    import django

    django.setup()
    import psutil
    import redis
    from django.core.management import call_command

    from ws4redis_uwsgi.bus import history, scripts
    from ws4redis_uwsgi.core.envelope import encode_parts

    call_command("migrate", verbosity=0)
    server = UwsgiServer(env, cores=args.clients + 200, log_path=workdir / "uwsgi.log").start()
    (worker,) = server.worker_pids()
    facilities = [f"soak{i}" for i in range(args.facilities)]
    run_seconds = args.minutes * 60
    warmup = 20.0
    stop_at = time.time() + warmup + run_seconds + 10
    out: multiprocessing.Queue = multiprocessing.Queue()
    chunks = [list(range(p, args.clients, args.procs)) for p in range(args.procs)]
    procs = [
        multiprocessing.Process(target=client_process, args=(server.url, facilities, chunk, args.churn, stop_at, out))
        for chunk in chunks
    ]
    for proc in procs:
        proc.start()

    client = redis.Redis.from_url(redis_server.url)
    published = dict.fromkeys(facilities, 0)
    refused = 0
    stop_publishing = threading.Event()

    def publish() -> None:
        nonlocal refused
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        n = 0
        while not stop_publishing.is_set():
            facility = facilities[n % len(facilities)]
            head, tail = encode_parts(str(published[facility]).encode())
            try:
                scripts.run(client, history.script_calls(client, [f"test:broadcast:{facility}"], head, tail, 0))
                published[facility] += 1
            except redis.RedisError:
                refused += 1
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    time.sleep(warmup)  # every client connected
    worker_proc = psutil.Process(worker)
    cpu0 = sum(worker_proc.cpu_times()[:2])
    samples = [(0.0, worker_proc.memory_info().rss)]
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < run_seconds:
        time.sleep(min(10.0, run_seconds - elapsed))
        samples.append((time.monotonic() - started, worker_proc.memory_info().rss))
        rss_mib = samples[-1][1] / 2**20
        print(f"  t={samples[-1][0]:6.0f}s  worker RSS {rss_mib:7.1f} MiB  published {sum(published.values())}", flush=True)
    stop_publishing.set()
    publisher.join()
    cpu = sum(worker_proc.cpu_times()[:2]) - cpu0
    reports = [state for _ in procs for state in out.get(timeout=120)]
    for proc in procs:
        proc.join(30)
    server.stop()
    redis_server.stop()

    lost = repeated_or_reordered = gaps = reconnects = 0
    expected = received = 0
    for state in reports:
        want = published[state["facility"]]
        expected += want
        received += state["received"]
        lost += max(0, want - state["received"])
        repeated_or_reordered += state["anomalies"] + max(0, state["received"] - want)
        gaps += state["gaps"]
        reconnects += state["reconnects"]
    start_rss, end_rss = samples[1][1] if len(samples) > 1 else samples[0][1], samples[-1][1]
    growth = end_rss - start_rss
    flat = growth < max(5 * 2**20, 0.05 * start_rss)
    print()
    print(f"clients / facilities / minutes     {len(reports)} / {args.facilities} / {args.minutes}")
    print(f"messages published (refused)       {sum(published.values())} ({refused})")
    print(f"deliveries expected / received     {expected} / {received}")
    print(f"lost / repeated or out of order    {lost} / {repeated_or_reordered}")
    print(f"gap notices / reconnects           {gaps} / {reconnects}")
    print(f"worker CPU over the run            {cpu:.1f} s ({cpu * 1e6 / max(received, 1):.1f} us per delivery)")
    print(f"worker RSS after warm-up / end     {start_rss / 2**20:.1f} / {end_rss / 2**20:.1f} MiB ({growth / 2**10:+.0f} KiB)")
    print(f"memory: {'flat' if flat else 'GROWING'}")
    ok = lost == 0 and repeated_or_reordered == 0 and gaps == 0 and flat and len(reports) == args.clients
    print("result:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
