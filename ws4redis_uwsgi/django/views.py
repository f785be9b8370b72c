"""A view that issues websocket tokens (:mod:`ws4redis_uwsgi.django.tokens`), to route in the site's urls.

``path("ws4redis/token", websocket_token)``: a logged-in user (by whatever
authentication the site's middleware does) gets ``{"token": ..., "expires_in":
<seconds>}``; ``?facility=chat&facility=news`` and ``?audience=user`` narrow
what the token may open. Anonymous requests get 403.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .. import settings
from .tokens import issue_token


@never_cache
@require_GET
def websocket_token(request: HttpRequest) -> JsonResponse:
    if not request.user.is_authenticated:
        return JsonResponse({"error": "log in first"}, status=403)
    session = getattr(request, "session", None)
    try:
        token = issue_token(
            request.user,
            session_key=getattr(session, "session_key", None),
            facilities=request.GET.getlist("facility") or None,
            audiences=request.GET.getlist("audience") or None,
        )
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"token": token, "expires_in": settings.get("WS4REDIS_TOKEN_MAX_AGE")})
