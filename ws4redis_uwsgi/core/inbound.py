"""The limits on what one client sends: size, rate, and which message is the heartbeat: pure, time passed in."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .close_codes import CloseCode


def is_heartbeat(message: bytes, heartbeat: str | None) -> bool:
    """True when a received ``message`` is the configured heartbeat, which is answered, never published."""
    return heartbeat is not None and message == heartbeat.encode("utf-8")


class TokenBucket:
    """Allows ``rate`` events per second on average with bursts of ``burst``; pure, time passed in.

    Slotted, as :class:`InboundPolicy`: every websocket that sent a frame (a pong to a keep-alive
    ping, at least) keeps one, so 100,000 idle websockets keep 100,000 of each.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def rested(self, now: float) -> bool:
        """Whether the bucket has been left alone long enough to be full from empty: a new one would be the same."""
        return self.rate > 0 and now - self._last >= self.burst / self.rate

    def take(self, now: float) -> bool:
        """Spend one token at time ``now``; False when the bucket is empty."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Verdict(Enum):
    """What to do with one frame a client sent; closing verdicts carry (code, reason)."""

    PUBLISH = "publish"
    HEARTBEAT = "heartbeat"
    TOO_BIG = (CloseCode.MESSAGE_TOO_BIG, "message too big")
    TOO_FAST = (CloseCode.POLICY_VIOLATION, "rate limit exceeded")


@dataclass(slots=True)
class InboundPolicy:
    """The limits on what one client sends: size and rate, and which message is the heartbeat.

    The rate counts every frame the server has to act on: messages (published),
    heartbeats (answered) and pings and pongs (a ping is answered too). A
    client that floods any of them is closed with 1008, so no frame kind lets
    one client keep the worker busy.
    """

    heartbeat: str | None = None
    max_size: int | None = None
    bucket: TokenBucket | None = None

    def judge(self, message: bytes, now: float) -> Verdict:
        """The verdict on one complete message (text or binary) the client sent at ``now``."""
        if self.max_size is not None and len(message) > self.max_size:
            return Verdict.TOO_BIG
        if not self.allow_frame(now):
            return Verdict.TOO_FAST
        if is_heartbeat(message, self.heartbeat):
            return Verdict.HEARTBEAT
        return Verdict.PUBLISH

    def rested(self, now: float) -> bool:
        """Whether a policy made anew at ``now`` would judge the same: the client sent nothing for long enough.

        An idle websocket can then give its policy up until it sends again (100,000 websockets that
        answer keep-alive pings would otherwise keep 100,000 of them).
        """
        return self.bucket is None or self.bucket.rested(now)

    def allow_frame(self, now: float) -> bool:
        """Count one frame (a message, a ping or a pong) at ``now``; False once the client sends too fast."""
        return self.bucket is None or self.bucket.take(now)
