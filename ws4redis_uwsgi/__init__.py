"""Server push for Django over WebSockets, with Redis as the bus and uWSGI + gevent as the loop.

A drop-in successor of django-websocket-redis (``ws4redis``): the same module
names, classes and settings live here under ``ws4redis_uwsgi``.
"""

__version__ = "0.1.0"
