"""Settings are read lazily; system checks reject bad values with an id and a hint."""

import pytest
from django.conf import settings as django_settings
from django.core.checks import Error
from django.core.signals import setting_changed
from django.test import override_settings

from ws4redis_uwsgi import settings
from ws4redis_uwsgi.checks import check_settings

# -- laziness -------------------------------------------------------------------------


def test_settings_follow_override_settings():
    assert settings.WS4REDIS_EXPIRE == 60  # tests.testsite.settings
    with override_settings(WS4REDIS_EXPIRE=5, WS4REDIS_PREFIX="other", WEBSOCKET_URL="/live/"):
        assert settings.WS4REDIS_EXPIRE == 5
        assert settings.WS4REDIS_PREFIX == "other"
        assert settings.WEBSOCKET_URL == "/live/"
        assert settings.get("WS4REDIS_EXPIRE") == 5
    assert settings.WS4REDIS_EXPIRE == 60


@pytest.mark.parametrize("name", sorted(settings.DEFAULTS))
def test_an_unset_setting_has_its_default(name):
    with override_settings():
        if hasattr(django_settings, name):
            delattr(django_settings, name)
        # Values are cached until Django signals a change, as override_settings does on
        # entry and exit; deleting a setting sends nothing, so say it here.
        setting_changed.send(sender=None, setting=name, value=None, enter=True)
        assert getattr(settings, name) == settings.DEFAULTS[name]
    setting_changed.send(sender=None, setting=name, value=None, enter=False)
    assert getattr(settings, name) == getattr(django_settings, name, settings.DEFAULTS[name])


def test_values_are_read_once_until_django_signals_a_change(monkeypatch):
    reads = []
    real = type(django_settings).__getattr__

    def counting(self, name):
        reads.append(name)
        return real(self, name)

    assert settings.get("WS4REDIS_MAX_CHANNELS") == 100
    monkeypatch.setattr(type(django_settings), "__getattr__", counting)
    django_settings.__dict__.pop("WS4REDIS_MAX_CHANNELS", None)
    for _ in range(3):
        assert settings.get("WS4REDIS_MAX_CHANNELS") == 100
    assert reads == []
    with override_settings(WS4REDIS_MAX_CHANNELS=7):
        assert settings.get("WS4REDIS_MAX_CHANNELS") == 7
    assert settings.get("WS4REDIS_MAX_CHANNELS") == 100


def test_the_defaults_are_those_of_the_readme():
    documented = {
        "WEBSOCKET_URL": "/ws/",
        "WS4REDIS_CONNECTION": {"host": "localhost", "port": 6379, "db": 0, "password": None},
        "WS4REDIS_PREFIX": None,
        "WS4REDIS_EXPIRE": 3600,
        "WS4REDIS_HEARTBEAT": None,
        "WS4REDIS_SUBSCRIBER": "ws4redis_uwsgi.subscriber.RedisSubscriber",
        "WS4REDIS_ALLOWED_CHANNELS": None,
        "WS4REDIS_PROCESS_REQUEST": None,
    }
    assert {name: settings.DEFAULTS[name] for name in documented} == documented


@pytest.mark.parametrize("name", ["WS4REDIS_NO_SUCH_SETTING", "SECRET_KEY", "ws4redis_expire"])
def test_an_unknown_attribute_raises_attribute_error(name):
    with pytest.raises(AttributeError, match=name):
        getattr(settings, name)


def test_get_callable_imports_dotted_paths_and_passes_callables_through():
    from tests.testsite.hooks import allowed_channels

    assert settings.get_callable("WS4REDIS_ALLOWED_CHANNELS") is allowed_channels
    with override_settings(WS4REDIS_ALLOWED_CHANNELS=len):
        assert settings.get_callable("WS4REDIS_ALLOWED_CHANNELS") is len
    with override_settings(WS4REDIS_ALLOWED_CHANNELS=None):
        assert settings.get_callable("WS4REDIS_ALLOWED_CHANNELS") is None


# -- system checks --------------------------------------------------------------------


def test_the_test_site_settings_pass_the_checks():
    assert check_settings() == []


def test_the_defaults_pass_the_checks():
    with override_settings():
        for name in settings.DEFAULTS:
            if hasattr(django_settings, name):
                delattr(django_settings, name)
        assert check_settings() == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("WEBSOCKET_URL", "/live/"),
        ("WS4REDIS_CONNECTION", {"host": "h", "port": 1, "db": 2}),
        ("WS4REDIS_CONNECTION", "unix:///tmp/r.sock"),
        ("WS4REDIS_PREFIX", None),
        ("WS4REDIS_PREFIX", "my-site_1.0"),
        ("WS4REDIS_EXPIRE", 0),
        ("WS4REDIS_HEARTBEAT", None),
        ("WS4REDIS_HEARTBEAT", "--heartbeat--"),
        ("WS4REDIS_HEARTBEAT", "ping: 1.0"),
        ("WS4REDIS_SUBSCRIBER", "ws4redis_uwsgi.subscriber.RedisSubscriber"),
        ("WS4REDIS_ALLOWED_CHANNELS", None),
        ("WS4REDIS_ALLOWED_CHANNELS", lambda request, channels: channels),
        ("WS4REDIS_PROCESS_REQUEST", "tests.testsite.hooks.process_request"),
        ("WS4REDIS_IDENTITY_CACHE", 0),
        ("WS4REDIS_IDENTITY_CACHE", None),
        ("WS4REDIS_IDENTITY_CACHE", 2.5),
        ("WS4REDIS_IDENTITY_CLAIM", 0),
        ("WS4REDIS_IDENTITY_CLAIM", None),
        ("WS4REDIS_IDENTITY_CLAIM", 60),
    ],
)
def test_good_values_pass(setting, value):
    with override_settings(**{setting: value}):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("WEBSOCKET_URL", "ws", "ws4redis_uwsgi.E001"),
        ("WEBSOCKET_URL", "/ws", "ws4redis_uwsgi.E001"),
        ("WEBSOCKET_URL", "ws/", "ws4redis_uwsgi.E001"),
        ("WEBSOCKET_URL", None, "ws4redis_uwsgi.E001"),
        ("WS4REDIS_CONNECTION", "http://x", "ws4redis_uwsgi.E002"),
        ("WS4REDIS_CONNECTION", {"host": "h", "bogus": 1}, "ws4redis_uwsgi.E002"),
        ("WS4REDIS_CONNECTION", 42, "ws4redis_uwsgi.E002"),
        ("WS4REDIS_PREFIX", "a:b", "ws4redis_uwsgi.E003"),
        ("WS4REDIS_PREFIX", "a*", "ws4redis_uwsgi.E003"),
        ("WS4REDIS_PREFIX", "a b", "ws4redis_uwsgi.E003"),
        ("WS4REDIS_PREFIX", "[x]", "ws4redis_uwsgi.E003"),
        ("WS4REDIS_PREFIX", 42, "ws4redis_uwsgi.E003"),
        ("WS4REDIS_EXPIRE", -1, "ws4redis_uwsgi.E004"),
        ("WS4REDIS_EXPIRE", "60", "ws4redis_uwsgi.E004"),
        ("WS4REDIS_EXPIRE", None, "ws4redis_uwsgi.E004"),
        ("WS4REDIS_EXPIRE", True, "ws4redis_uwsgi.E004"),
        ("WS4REDIS_HEARTBEAT", "it's", "ws4redis_uwsgi.E005"),
        ("WS4REDIS_HEARTBEAT", 'say "hi"', "ws4redis_uwsgi.E005"),
        ("WS4REDIS_HEARTBEAT", "</script>", "ws4redis_uwsgi.E005"),
        ("WS4REDIS_HEARTBEAT", "", "ws4redis_uwsgi.E005"),
        ("WS4REDIS_HEARTBEAT", "x" * 65, "ws4redis_uwsgi.E005"),
        ("WS4REDIS_HEARTBEAT", b"hb", "ws4redis_uwsgi.E005"),
        # The context processor puts the heartbeat inside a JavaScript string
        # literal, where a newline is a syntax error: a trailing one must not pass.
        ("WS4REDIS_HEARTBEAT", "hb\n", "ws4redis_uwsgi.E005"),
        ("WS4REDIS_SUBSCRIBER", "no.such.Thing", "ws4redis_uwsgi.E006"),
        ("WS4REDIS_SUBSCRIBER", "nodots", "ws4redis_uwsgi.E006"),
        ("WS4REDIS_SUBSCRIBER", 42, "ws4redis_uwsgi.E006"),
        ("WS4REDIS_ALLOWED_CHANNELS", 42, "ws4redis_uwsgi.E007"),
        ("WS4REDIS_ALLOWED_CHANNELS", "tests.testsite.hooks.no_such_hook", "ws4redis_uwsgi.E007"),
        ("WS4REDIS_PROCESS_REQUEST", "no.such.function", "ws4redis_uwsgi.E008"),
        ("WS4REDIS_PROCESS_REQUEST", ["not", "callable"], "ws4redis_uwsgi.E008"),
        ("WS4REDIS_WAIT_REPLICAS", -1, "ws4redis_uwsgi.E009"),
        ("WS4REDIS_WAIT_REPLICAS", "1", "ws4redis_uwsgi.E009"),
        ("WS4REDIS_WAIT_REPLICAS", True, "ws4redis_uwsgi.E009"),
        ("WS4REDIS_TOKEN_MAX_AGE", 0, "ws4redis_uwsgi.E013"),
        ("WS4REDIS_TOKEN_MAX_AGE", "60", "ws4redis_uwsgi.E013"),
        ("WS4REDIS_ON_GAP", "no.such.hook", "ws4redis_uwsgi.E012"),
        ("WS4REDIS_ON_GAP", 42, "ws4redis_uwsgi.E012"),
        ("WS4REDIS_METRICS_PORT", 0, "ws4redis_uwsgi.E015"),
        ("WS4REDIS_METRICS_PORT", "9300", "ws4redis_uwsgi.E015"),
        ("WS4REDIS_METRICS_PORT", 70000, "ws4redis_uwsgi.E015"),
        ("WS4REDIS_METRICS_HOST", "", "ws4redis_uwsgi.E016"),
        ("WS4REDIS_WEBSOCKET_PORT", "8001", "ws4redis_uwsgi.E017"),
        ("WS4REDIS_WEBSOCKET_PORT", 0, "ws4redis_uwsgi.E017"),
        ("WS4REDIS_SESSION_RECHECK", -1, "ws4redis_uwsgi.E014"),
        ("WS4REDIS_SESSION_RECHECK", "60", "ws4redis_uwsgi.E014"),
        ("WS4REDIS_SESSION_RECHECK", True, "ws4redis_uwsgi.E014"),
        ("WS4REDIS_IDENTITY_CACHE", -1, "ws4redis_uwsgi.E018"),
        ("WS4REDIS_IDENTITY_CACHE", "5", "ws4redis_uwsgi.E018"),
        ("WS4REDIS_IDENTITY_CACHE", True, "ws4redis_uwsgi.E018"),
        ("WS4REDIS_IDENTITY_CLAIM", -1, "ws4redis_uwsgi.E037"),
        ("WS4REDIS_IDENTITY_CLAIM", "30", "ws4redis_uwsgi.E037"),
        ("WS4REDIS_CHANNEL_LINGER", -1, "ws4redis_uwsgi.E034"),
        ("WS4REDIS_CHANNEL_LINGER", "5", "ws4redis_uwsgi.E034"),
        ("WS4REDIS_CHANNEL_LINGER", None, "ws4redis_uwsgi.E034"),
        ("WS4REDIS_RESTART_RECONNECT_RATE", 0, "ws4redis_uwsgi.E036"),
        ("WS4REDIS_RESTART_RECONNECT_RATE", "2000", "ws4redis_uwsgi.E036"),
        ("WS4REDIS_GC_FULL_THRESHOLD", 0, "ws4redis_uwsgi.E035"),
        ("WS4REDIS_GC_FULL_THRESHOLD", 2.5, "ws4redis_uwsgi.E035"),
        ("WS4REDIS_GC_FULL_THRESHOLD", True, "ws4redis_uwsgi.E035"),
        ("WS4REDIS_PUBLISH_ON_COMMIT", "yes", "ws4redis_uwsgi.E011"),
        ("WS4REDIS_PUBLISH_ON_COMMIT", 1, "ws4redis_uwsgi.E011"),
        ("WS4REDIS_WAIT_TIMEOUT", 0, "ws4redis_uwsgi.E010"),
        ("WS4REDIS_WAIT_TIMEOUT", -1.5, "ws4redis_uwsgi.E010"),
        ("WS4REDIS_WAIT_TIMEOUT", "1", "ws4redis_uwsgi.E010"),
        ("WS4REDIS_CONNECTION", "redis+sentinel://h:26379", "ws4redis_uwsgi.E002"),
        ("WS4REDIS_CONNECTION", "redis+cluster://h:7000/3", "ws4redis_uwsgi.E002"),
        ("WS4REDIS_CONNECTION", {"sentinels": [("h", 26379)]}, "ws4redis_uwsgi.E002"),
        ("WS4REDIS_CONNECTION", {"cluster": True, "startup_nodes": [("h", "port")]}, "ws4redis_uwsgi.E002"),
    ],
)
def test_each_bad_value_gives_one_error_with_its_id_and_a_hint(setting, value, check_id):
    with override_settings(**{setting: value}):
        errors = check_settings()
    assert len(errors) == 1, errors
    (error,) = errors
    assert isinstance(error, Error)
    assert error.id == check_id
    assert error.msg.startswith(setting + " ")
    assert error.hint


def test_an_error_shows_the_bad_value():
    with override_settings(WS4REDIS_PREFIX="a:b"):
        (error,) = check_settings()
    assert error.msg == "WS4REDIS_PREFIX is 'a:b'."
    assert "':'" in error.hint


@pytest.mark.parametrize(
    "value",
    [
        "redis+sentinel://:pw@h1:26379,h2:26379/mymaster/1",
        {"sentinels": [("h1", 26379)], "master_name": "mymaster", "db": 0, "password": None, "sentinel_kwargs": {}},
        "redis+cluster://h1:7000,h2:7001",
        {"cluster": True, "startup_nodes": [("h1", 7000), ("h2", 7001)], "password": None},
    ],
)
def test_the_sentinel_and_cluster_forms_pass_the_check(value):
    with override_settings(WS4REDIS_CONNECTION=value):
        assert check_settings() == []


def test_a_sentinel_setting_without_its_master_name_says_so():
    with override_settings(WS4REDIS_CONNECTION={"sentinels": [("h", 26379)]}):
        (error,) = check_settings()
    assert error.msg == "WS4REDIS_CONNECTION is not usable: a Sentinel setting needs 'master_name'."
    assert "redis+sentinel://" in error.hint


def test_a_connection_error_names_the_problem():
    with override_settings(WS4REDIS_CONNECTION={"host": "h", "bogus": 1}):
        (error,) = check_settings()
    assert "'bogus'" in error.msg
    assert "redis://" in error.hint


def test_several_bad_values_give_several_errors():
    with override_settings(WEBSOCKET_URL="ws", WS4REDIS_EXPIRE=-1, WS4REDIS_SUBSCRIBER="no.such.Thing"):
        ids = [e.id for e in check_settings()]
    assert ids == ["ws4redis_uwsgi.E001", "ws4redis_uwsgi.E004", "ws4redis_uwsgi.E006"]


def test_the_check_is_registered_with_django():
    from django.core import checks

    with override_settings(WS4REDIS_EXPIRE=-1):
        ids = [e.id for e in checks.run_checks()]
    assert "ws4redis_uwsgi.E004" in ids


@pytest.mark.parametrize("value", [1, 100, 10_000, None])
def test_a_full_collection_threshold_of_young_collections_or_none_passes_the_check(value):
    with override_settings(WS4REDIS_GC_FULL_THRESHOLD=value):
        assert check_settings() == []
