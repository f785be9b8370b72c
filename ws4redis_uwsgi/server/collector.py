"""Python's garbage collector in a websocket worker: full collections ten times rarer than by default.

Why: a full collection walks every object the process keeps, and an open
websocket keeps about ten of them, scattered over the heap, at 0.4-0.5 µs
each. Python runs one each time its young generations were collected ten
times over (``gc.set_threshold``'s third value) once its long-lived objects
grew by a quarter; during a burst of handshakes that is every quarter of
growth, so each handshake pays for walking its websocket's objects about
four times over, and a worker that holds 100,000 websockets pauses about
0.6 s each time. What those collections find in a websocket worker is
almost nothing: an ended websocket is freed by reference counting, with no
cycle left (``bench/peers.py --scenarios d``: seven full collections in
8,000 logged-in handshakes, 0.9 s of the worker's time, found no garbage
at all). With the threshold at 100 the same burst runs none. Cycles that
do become garbage are still collected, by the young generations' frequent
collections or by a later full one.
"""

from __future__ import annotations

import gc


def tune_collector(full_threshold: int | None) -> None:
    """Set the third value of ``gc.set_threshold`` (``WS4REDIS_GC_FULL_THRESHOLD``); None leaves all three alone.

    The first two (how often the young generations are collected) stay what
    the process has: a site that tuned them keeps its values.
    """
    if full_threshold is None:
        return
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_threshold)
