"""The limits of the websocket side, read from settings in one place."""

from __future__ import annotations

from .. import settings
from ..core.inbound import InboundPolicy, TokenBucket


def inbound_policy(now: float) -> InboundPolicy:
    """A client's inbound policy as the settings say (``WS4REDIS_HEARTBEAT``, ``_MAX_MESSAGE_SIZE``, ``_RATE_LIMIT``)."""
    rate = settings.get("WS4REDIS_RATE_LIMIT")
    return InboundPolicy(
        heartbeat=settings.get("WS4REDIS_HEARTBEAT"),
        max_size=settings.get("WS4REDIS_MAX_MESSAGE_SIZE"),
        bucket=TokenBucket(rate[0], rate[1], now) if rate else None,
    )
