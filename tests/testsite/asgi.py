"""The test site under an ASGI server (uvicorn, tests/integration/test_async_views.py): pages and views, no websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.testsite.settings")
application = get_asgi_application()
