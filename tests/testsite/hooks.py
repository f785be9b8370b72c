"""The site's WS4REDIS_ALLOWED_CHANNELS hook, as a ws4redis user would write one."""

from django.core.exceptions import PermissionDenied


def allowed_channels(request, channels):
    facility = request.path_info.rsplit("/", 1)[-1]
    if facility == "staff-only" and not request.user.is_staff:
        raise PermissionDenied("staff only")
    if facility == "read-only":
        return [c for c in channels if not c.startswith("publish-")]
    return channels
