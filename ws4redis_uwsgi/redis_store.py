"""ws4redis's import path of messages and the store: :mod:`ws4redis_uwsgi.bus.store`."""

from .bus.store import SELF, RedisMessage, RedisStore

__all__ = ["SELF", "RedisMessage", "RedisStore"]
