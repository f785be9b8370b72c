"""The development application, as ``ws4redis.django_runserver.application``.

``WSGI_APPLICATION = "ws4redis_uwsgi.django_runserver.application"`` serves
pages and websockets from ``manage.py runserver`` (see
:mod:`ws4redis_uwsgi.server.development` for the design). Not for production.
"""

from .server.development import DevelopmentApplication

#: ``WSGI_APPLICATION = "ws4redis_uwsgi.django_runserver.application"``
application = DevelopmentApplication()

__all__ = ["DevelopmentApplication", "application"]
