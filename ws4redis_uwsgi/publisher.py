"""ws4redis's import path of the publisher: :mod:`ws4redis_uwsgi.bus.publisher`."""

from .bus.publisher import RedisPublisher

__all__ = ["RedisPublisher"]
