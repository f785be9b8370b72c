"""The settings of a :class:`~ws4redis_uwsgi.testing.live.LiveServer`'s websocket worker.

The project's own settings module (``WS4REDIS_TESTING_SETTINGS_MODULE``), with
the values the test process hands over in ``WS4REDIS_TESTING_OVERRIDES``
(JSON): the test Redis in ``WS4REDIS_CONNECTION`` and the test databases in
``DATABASES``. Nothing else of Django may be imported here: Django is not set
up yet when it reads its settings.
"""

import json
import os
from importlib import import_module

_project = import_module(os.environ["WS4REDIS_TESTING_SETTINGS_MODULE"])
globals().update({name: getattr(_project, name) for name in dir(_project) if name.isupper()})
globals().update(json.loads(os.environ["WS4REDIS_TESTING_OVERRIDES"]))
