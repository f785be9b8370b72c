"""Exceptions of ws4redis_uwsgi, named as in ws4redis.

WebSocketError            the websocket is closed or broken
└── FrameTooLargeException
HandshakeError            a request cannot be upgraded (HTTP 400)
└── UpgradeRequiredError  not a websocket upgrade request (HTTP 426)
"""


class WebSocketError(Exception):
    """Raised when a websocket is closed or cannot be read or written."""


class FrameTooLargeException(WebSocketError):  # noqa: N818 - the name ws4redis used
    """Raised when a received frame exceeds the configured size limit."""


class HandshakeError(Exception):
    """Raised when a request cannot be upgraded to a websocket."""

    status = "400 Bad Request"


class UpgradeRequiredError(HandshakeError):
    """Raised when a request to the websocket URL is not an upgrade request."""

    status = "426 Upgrade Required"
