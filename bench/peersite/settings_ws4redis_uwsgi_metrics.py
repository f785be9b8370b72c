"""ws4redis_uwsgi with its worker's metrics endpoint on (bench/systems.py scrapes it every second)."""

import os

from peersite.settings_ws4redis_uwsgi import *  # noqa: F403 - the same site, plus:

# Unset for the helper commands (--make-sessions, --publisher), which serve no websocket.
WS4REDIS_METRICS_PORT = int(os.environ["BENCH_METRICS_PORT"]) if "BENCH_METRICS_PORT" in os.environ else None
