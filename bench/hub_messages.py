"""The hub's CPU per message it reads, with hiredis reading its socket and with redis-py's PubSub.

    .venv/bin/python bench/hub_messages.py [--channels 2000] [--messages 50000]

Why: every message published on a channel a worker holds costs that worker
one reply to read, whatever the websockets it reaches; with messages to
users (one websocket each) that is most of what a delivery costs. Here a
hub (``SubscriptionHub``, in this process, with a listener per channel that
only counts) holds ``--channels`` channels of a redis-server of its own,
and a helper process publishes ``--messages`` messages over them, pipelined;
this process's CPU (utime+stime) from the first PUBLISH until the last
message was handed out, divided by the messages, is the hub's cost. Twice:
the hub reading the socket itself (what a uWSGI worker under gevent does),
and reading through redis-py's ``PubSub`` (what it does over TLS), a client
with a socket timeout outside gevent choosing it (``bus/subscription.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import redis
from processes import wait_until
from redis.backoff import NoBackoff
from redis.retry import Retry
from systems import RedisProcess

from ws4redis_uwsgi.bus.hub import SubscriptionHub

PUBLISHER = """
import sys, redis
port, channels, messages = map(int, sys.argv[1:])
pipe = redis.Redis(port=port).pipeline(transaction=False)
for i in range(messages):
    pipe.publish(f"bench:user:{i % channels}", b'{"n": %d}' % i)
pipe.execute()
"""


class Counter:
    received = 0

    def deliver(self, message: object) -> None:
        Counter.received += 1

    def resync(self) -> None:
        pass


def measure(port: int, socket_timeout: float | None, channels: int, messages: int) -> tuple[str, float]:
    """The reader the hub chose, and its CPU per message in µs."""
    hub = SubscriptionHub(lambda: redis.Redis(port=port, socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0)))
    names = [f"bench:user:{i}" for i in range(channels)]
    listener = Counter()
    hub.add(listener, names)
    wait_until(lambda: gevent.sleep(0.01) or hub.confirmed(names), 30, "the hub's subscriptions")
    reader = next(iter(hub._links.values())).reader or "?"  # the one link of a standalone Redis
    Counter.received = 0
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), str(channels), str(messages)])
    started = time.process_time()
    wait_until(lambda: gevent.sleep(0.001) or Counter.received >= messages, 120, "every message")
    used = time.process_time() - started
    publisher.wait(30)
    hub.close()
    return reader, 1e6 * used / messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=2, help="measurements of each reader, alternated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as workdir:
        server = RedisProcess(Path(workdir)).start()
        try:
            results: dict[str, list[float]] = {}
            for _ in range(args.runs):
                for timeout in (None, 5.0):
                    reader, cost = measure(server.port, timeout, args.channels, args.messages)
                    results.setdefault(reader, []).append(cost)
        finally:
            server.stop()
    print(f"hub CPU per message read ({args.messages:,} messages over {args.channels:,} channels, {args.runs} runs each)")
    for reader, costs in results.items():
        print(f"  replies read by {reader:9s} {' / '.join(f'{c:.1f}' for c in costs)} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
