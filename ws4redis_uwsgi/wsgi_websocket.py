"""The websocket vassal's entry point: ``uwsgi --module ws4redis_uwsgi.wsgi_websocket``.

gevent must patch the standard library before anything opens a socket
(redis-py, Django's database drivers), so patching is the first thing this
module does. Set ``DJANGO_SETTINGS_MODULE`` in the vassal's environment.
"""

from gevent import monkey

monkey.patch_all()

import django  # noqa: E402

django.setup(set_prefix=False)

from ws4redis_uwsgi.server.uwsgi import uWSGIWebsocketServer  # noqa: E402

application = uWSGIWebsocketServer()
