"""ws4redis's import path of the subscriber (``WS4REDIS_SUBSCRIBER``'s default): :mod:`ws4redis_uwsgi.bus.subscriber`."""

from .bus.subscriber import RedisSubscriber

__all__ = ["RedisSubscriber"]
