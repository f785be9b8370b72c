"""Origin check, rate limit and inbound policy: values in, verdicts out."""

import pytest
from django.test import override_settings

from ws4redis_uwsgi import settings
from ws4redis_uwsgi.core.close_codes import CloseCode
from ws4redis_uwsgi.core.handshake import check_origin, origin_host
from ws4redis_uwsgi.core.inbound import InboundPolicy, TokenBucket, Verdict
from ws4redis_uwsgi.exceptions import OriginError
from ws4redis_uwsgi.server.limits import inbound_policy, max_channels, max_connections


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://example.com", ["example.com"]),
        ("https://example.com:8443", ["example.com"]),  # port ignored
        ("https://EXAMPLE.com", ["example.com"]),
        ("https://chat.example.com", [".example.com"]),
        ("https://anything.test", ["*"]),
        ("http://[::1]:8000", ["[::1]"]),
    ],
)
def test_allowed_origins_pass(origin, allowed):
    check_origin(origin, allowed, allow_missing=False)


@pytest.mark.parametrize(
    "origin",
    ["https://evil.com", "https://example.com.evil.com", "null", "file://", "example.com", "ws://example.com", "https://"],
)
def test_foreign_or_odd_origins_are_refused(origin):
    with pytest.raises(OriginError) as refused:
        check_origin(origin, ["example.com", ".example.org"], allow_missing=False)
    assert refused.value.status == "403 Forbidden"


def test_missing_origin_only_when_allowed():
    with pytest.raises(OriginError, match="Origin header required"):
        check_origin(None, ["*"], allow_missing=False)
    with pytest.raises(OriginError):
        check_origin("", ["*"], allow_missing=False)
    check_origin(None, [], allow_missing=True)


def test_origin_host():
    assert origin_host("https://Example.COM:443") == "example.com"
    assert origin_host("null") is None


def test_allowed_origins_default_to_allowed_hosts():
    with override_settings(ALLOWED_HOSTS=["a.test"], WS4REDIS_ALLOWED_ORIGINS=None):
        assert settings.allowed_origins() == ["a.test"]
    with override_settings(ALLOWED_HOSTS=["a.test"], WS4REDIS_ALLOWED_ORIGINS=[".b.test"]):
        assert settings.allowed_origins() == [".b.test"]
    with override_settings(ALLOWED_HOSTS=[], DEBUG=True, WS4REDIS_ALLOWED_ORIGINS=None):
        assert settings.allowed_origins() == [".localhost", "127.0.0.1", "[::1]"]


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # refills to the burst, not beyond


def test_inbound_policy_verdicts():
    policy = InboundPolicy(heartbeat="hb", max_size=10, bucket=TokenBucket(1, 2, 0.0))
    assert policy.judge(b"x" * 11, 0.0) is Verdict.TOO_BIG
    assert policy.judge(b"hb", 0.0) is Verdict.HEARTBEAT
    assert policy.judge(b"hello", 0.0) is Verdict.PUBLISH
    assert policy.judge(b"again", 0.0) is Verdict.TOO_FAST
    assert policy.judge(b"hb", 1.0) is Verdict.HEARTBEAT  # a token back after a second
    assert policy.judge(b"hb", 1.0) is Verdict.TOO_FAST  # heartbeats count against the rate too
    assert Verdict.TOO_BIG.value == (CloseCode.MESSAGE_TOO_BIG, "message too big")
    assert Verdict.TOO_FAST.value[0] == CloseCode.POLICY_VIOLATION == 1008


def test_pings_and_pongs_share_the_rate_with_messages():
    policy = InboundPolicy(heartbeat=None, max_size=None, bucket=TokenBucket(1, 3, 0.0))
    assert policy.allow_frame(0.0) and policy.allow_frame(0.0)
    assert policy.judge(b"hello", 0.0) is Verdict.PUBLISH
    assert not policy.allow_frame(0.0)
    assert InboundPolicy(bucket=None).allow_frame(0.0)  # no rate limit set: nothing counted


def test_inbound_policy_follows_the_settings():
    with override_settings(WS4REDIS_RATE_LIMIT=None, WS4REDIS_MAX_MESSAGE_SIZE=None, WS4REDIS_HEARTBEAT=None):
        policy = inbound_policy(now=0.0)
        assert policy.judge(b"x" * 10_000_000, 0.0) is Verdict.PUBLISH
    with override_settings(WS4REDIS_RATE_LIMIT=(5, 7)):
        policy = inbound_policy(now=1.0)
        assert policy.bucket is not None and (policy.bucket.rate, policy.bucket.burst) == (5, 7)


def test_a_bucket_is_rested_once_left_alone_long_enough_to_be_full_from_empty() -> None:
    from ws4redis_uwsgi.core.inbound import InboundPolicy, TokenBucket

    bucket = TokenBucket(rate=10, burst=20, now=100.0)  # full from empty in 2 s
    assert not bucket.rested(101.9)
    assert bucket.rested(102.0)
    for _ in range(20):
        bucket.take(102.0)
    assert not bucket.rested(103.9)  # taken from at 102.0: rested again only 2 s later
    assert bucket.rested(104.0)
    assert InboundPolicy(bucket=TokenBucket(rate=10, burst=20, now=100.0)).rested(102.0)
    assert not InboundPolicy(bucket=TokenBucket(rate=10, burst=20, now=100.0)).rested(100.5)
    assert InboundPolicy().rested(100.0)  # no rate limit: nothing to keep
    assert not TokenBucket(rate=0, burst=1, now=0.0).rested(1e9)  # a bucket that never refills is never rested


# -- the limits of how many ----------------------------------------------------------------


def test_the_connection_channel_and_pending_limits_follow_their_settings():
    with override_settings(WS4REDIS_MAX_CONNECTIONS=7, WS4REDIS_MAX_CHANNELS=3, WS4REDIS_MAX_PENDING_MESSAGES=5):
        assert max_connections() == 7
        assert max_channels() == 3
        assert settings.max_pending_messages() == 5
    with override_settings(WS4REDIS_MAX_CONNECTIONS=None):
        assert max_connections() is None  # no limit but what the adapter can hold
