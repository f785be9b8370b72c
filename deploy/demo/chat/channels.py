"""The demo's WS4REDIS_ALLOWED_CHANNELS hook."""


def allowed_channels(request, channels):
    """Nobody publishes on the counter facility from a browser: only the counter view does."""
    if request.path_info.endswith("/counter"):
        return [c for c in channels if not c.startswith("publish-")]
    return channels
