"""Exceptions of ws4redis_uwsgi, named as in ws4redis.

WebSocketError            the websocket is closed or broken
├── FrameTooLargeException  ws4redis's name, never raised (oversized messages close with 1009)
└── SlowConsumerError     the client did not take a frame in time; the connection is reset
HandshakeError            a request cannot be upgraded (HTTP 400)
├── UpgradeRequiredError  not a websocket upgrade request (HTTP 426)
├── OriginError           a foreign or missing Origin (HTTP 403)
├── TooManyChannelsError  more channels than WS4REDIS_MAX_CHANNELS (HTTP 403)
└── ServerBusyError       no connection slot or file descriptor left (HTTP 503, Retry-After)
"""


class WebSocketError(Exception):
    """Raised when a websocket is closed or cannot be read or written."""


class FrameTooLargeException(WebSocketError):  # noqa: N818 - the name ws4redis used
    """ws4redis's name, kept so that code catching it still imports; never raised.

    An oversized message closes its websocket with 1009 instead (see
    :class:`~ws4redis_uwsgi.core.frames.MessageSizeLimit`).
    """


class SlowConsumerError(WebSocketError):
    """Raised when a client did not take a frame within the send timeout, or fell too far behind while one waited.

    Its connection is reset.
    """


class HandshakeError(Exception):
    """Raised when a request cannot be upgraded to a websocket."""

    status = "400 Bad Request"
    #: Extra response headers of the refusal.
    headers: tuple[tuple[str, str], ...] = ()


class UpgradeRequiredError(HandshakeError):
    """Raised when a request to the websocket URL is not an upgrade request."""

    status = "426 Upgrade Required"
    headers = (("Sec-WebSocket-Version", "13"),)


class OriginError(HandshakeError):
    """Raised when the ``Origin`` of a websocket request is not allowed."""

    status = "403 Forbidden"


class TooManyChannelsError(HandshakeError):
    """Raised when a websocket would subscribe to more channels than allowed."""

    status = "403 Forbidden"


class ServerBusyError(HandshakeError):
    """Raised when the worker already holds as many websockets as it may."""

    status = "503 Service Unavailable"
    headers = (("Retry-After", "5"),)
