"""Views of the test site: a page served by the development server next to its websockets, an async view that publishes."""

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from ws4redis_uwsgi.publisher import RedisPublisher
from ws4redis_uwsgi.redis_store import SELF


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a page of the test site", content_type="text/html")  # a page: its user gets an identity claim


async def publish_async(request: HttpRequest) -> JsonResponse:
    """An async view that publishes: ``?facility=F&audience=broadcast|user|group|session&message=M[&to=NAME][&binary]``.

    The user, group or session is ``to``, else the requesting user's own (``SELF``).
    """
    audience = request.GET.get("audience", "broadcast")
    if audience == "broadcast":
        targets: dict[str, Any] = {"broadcast": True}
    elif "to" in request.GET:  # by name: no database
        targets = {f"{audience}s": [request.GET["to"]]}
    else:
        targets = {f"{audience}s": [SELF], "request": request}
    publisher = RedisPublisher(facility=request.GET["facility"], **targets)
    message = request.GET.get("message", "from an async view")
    expire = int(request.GET.get("expire", "0"))
    receivers = await publisher.apublish_message(message, expire=expire, binary="binary" in request.GET)
    return JsonResponse({"receivers": receivers, "id": publisher.last_message_id})
