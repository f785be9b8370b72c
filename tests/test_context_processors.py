from django.test import RequestFactory, override_settings

from ws4redis_uwsgi.context_processors import default


def test_websocket_uri_follows_the_page_scheme_and_setting():
    factory = RequestFactory()
    assert default(factory.get("/", HTTP_HOST="localhost"))["WEBSOCKET_URI"] == "ws://localhost/ws/"
    secure = factory.get("/", HTTP_HOST="localhost", secure=True)
    with override_settings(WEBSOCKET_URL="/live/"):
        assert default(secure)["WEBSOCKET_URI"] == "wss://localhost/live/"


def test_heartbeat_is_a_quoted_javascript_string_or_none():
    request = RequestFactory().get("/", HTTP_HOST="localhost")
    with override_settings(WS4REDIS_HEARTBEAT="--heartbeat--"):
        assert default(request)["WS4REDIS_HEARTBEAT"] == "'--heartbeat--'"
    with override_settings(WS4REDIS_HEARTBEAT=None):
        assert default(request)["WS4REDIS_HEARTBEAT"] is None


def test_a_websocket_port_of_its_own_keeps_the_pages_host():
    factory = RequestFactory()
    with override_settings(WS4REDIS_WEBSOCKET_PORT=8001, ALLOWED_HOSTS=["127.0.0.1", "localhost", "[::1]"]):
        assert default(factory.get("/", HTTP_HOST="127.0.0.1:8000"))["WEBSOCKET_URI"] == "ws://127.0.0.1:8001/ws/"
        assert default(factory.get("/", HTTP_HOST="localhost"))["WEBSOCKET_URI"] == "ws://localhost:8001/ws/"
        assert default(factory.get("/", HTTP_HOST="[::1]:8000"))["WEBSOCKET_URI"] == "ws://[::1]:8001/ws/"
        assert default(factory.get("/", HTTP_HOST="localhost", secure=True))["WEBSOCKET_URI"] == "wss://localhost:8001/ws/"
