"""ws4redis's import path of the publisher: :mod:`ws4redis_uwsgi.bus.publisher`.

:class:`NotReplicatedError` (a ``redis.RedisError``) is what a publish raises when
``WS4REDIS_WAIT_REPLICAS`` replicas did not acknowledge it in time.
"""

from .bus.publisher import RedisPublisher
from .bus.scripts import NotReplicatedError

__all__ = ["NotReplicatedError", "RedisPublisher"]
