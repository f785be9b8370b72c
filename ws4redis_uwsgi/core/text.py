"""Text from requests made safe for log lines: pure."""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def loggable(text: object, limit: int = 200) -> str:
    """``text`` from a request, safe for one log line: control characters escaped, cut at ``limit``.

    A path such as ``/ws/x%0A2026-01-01 ... CRITICAL ...`` must not start a
    forged line in the log.
    """
    value = str(text)
    if len(value) > limit:
        value = value[:limit] + "..."
    return _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), value)
