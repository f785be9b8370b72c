"""ws4redis's import path of the context processor (``'ws4redis_uwsgi.context_processors.default'``)."""

from .django.context_processors import default

__all__ = ["default"]
