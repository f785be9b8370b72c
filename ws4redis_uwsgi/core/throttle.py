"""How often a repeated event may get a log line of its own: pure, the caller passes the time.

An event that can repeat for every message (a message nobody may receive, a
listener whose delivery fails) would flood the log; one line per interval,
saying how many happened since the last, keeps it readable and bounded.
"""

from __future__ import annotations


class Throttle:
    """Counts events; :meth:`due` says when one may be reported, at most once per ``interval`` seconds."""

    __slots__ = ("interval", "reported_at", "since")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: When the last report was made (monotonic seconds); none yet at first.
        self.reported_at = float("-inf")
        #: Events since the last report.
        self.since = 0

    def due(self, now: float) -> int | None:
        """Count one event at ``now``: the events since the last report, this one included, when it is reported; else None."""
        self.since += 1
        if now - self.reported_at < self.interval:
            return None
        count, self.since, self.reported_at = self.since, 0, now
        return count
