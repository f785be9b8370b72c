"""The site's WS4REDIS_ALLOWED_CHANNELS hook, as a ws4redis user would write one."""

from django.core.exceptions import PermissionDenied

from ws4redis_uwsgi.subscriber import RedisSubscriber


def allowed_channels(request, channels):
    facility = request.path_info.rsplit("/", 1)[-1]
    if facility == "staff-only" and not request.user.is_staff:
        raise PermissionDenied("staff only")
    if facility == "read-only":
        return [c for c in channels if not c.startswith("publish-")]
    return channels


def process_request(request):
    """WS4REDIS_PROCESS_REQUEST: token authentication for non-browser clients, else the session cookie."""
    from django.contrib.auth.models import AnonymousUser, User

    from ws4redis_uwsgi.django.identity import load_session_and_user

    token = request.GET.get("token")
    if token is None:
        load_session_and_user(request)
        return
    # A toy token scheme for the tests: "token-<username>".
    request.session = None
    username = token.removeprefix("token-")
    request.user = User.objects.filter(username=username).first() or AnonymousUser()


class SiteSubscriber(RedisSubscriber):
    """WS4REDIS_SUBSCRIBER: adds a site-wide notices channel when the query asks for it."""

    def set_pubsub_channels(self, request, channels):
        super().set_pubsub_channels(request, channels)
        if "notices" in request.GET:
            self.subscribe(f"{self.get_prefix()}site-notices")


def fresh_state(facility, channels, username):
    """WS4REDIS_ON_GAP: what a page would reload after a gap, for the facilities the gap tests use."""
    if facility.startswith("gap-broken"):
        raise RuntimeError("the site's hook failed")
    if not facility.startswith("gap-"):
        return []
    return [f"state of {facility} for {username or 'anonymous'} on {len(channels)} channel(s)"]


def has_presence(facility):
    """WS4REDIS_PRESENCE: the facilities of the presence tests."""
    return facility.startswith("presence-")
