"""ws4redis's import path of the exceptions: :mod:`ws4redis_uwsgi.core.exceptions`."""

from .core.exceptions import (
    FrameTooLargeException,
    HandshakeError,
    OriginError,
    ServerBusyError,
    SlowConsumerError,
    TooManyChannelsError,
    UpgradeRequiredError,
    WebSocketError,
)

__all__ = [
    "FrameTooLargeException",
    "HandshakeError",
    "OriginError",
    "ServerBusyError",
    "SlowConsumerError",
    "TooManyChannelsError",
    "UpgradeRequiredError",
    "WebSocketError",
]
