"""Pages of the demo. Views publish with RedisPublisher; browsers listen with ws4redis.js."""

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from ws4redis_uwsgi.bus.connection import get_client
from ws4redis_uwsgi.publisher import RedisPublisher
from ws4redis_uwsgi.redis_store import SELF


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html")


def page(request: HttpRequest, template: str) -> HttpResponse:
    return render(request, template)


@login_required
@require_http_methods(["GET", "POST"])
def user_chat(request: HttpRequest) -> HttpResponse:
    """A message to one user, shown to the recipient and in the sender's own window."""
    if request.method == "POST":
        recipient = User.objects.filter(username=request.POST.get("user", "")).first()
        text = request.POST.get("message", "").strip()
        if recipient is None or not text:
            return JsonResponse({"error": "choose a user and write a message"}, status=400)
        message = f"{request.user.get_username()} → {recipient.get_username()}: {text}"
        RedisPublisher(facility="userchat", users=[recipient.get_username(), SELF], request=request).publish_message(message)
        return JsonResponse({"sent": True})
    users = User.objects.exclude(pk=request.user.pk).order_by("username")
    return render(request, "chat/userchat.html", {"users": users})


@login_required
@require_http_methods(["GET", "POST"])
def group_chat(request: HttpRequest) -> HttpResponse:
    """A message to every member of one of the sender's groups."""
    groups = request.user.groups.order_by("name")
    if request.method == "POST":
        group = groups.filter(name=request.POST.get("group", "")).first()
        text = request.POST.get("message", "").strip()
        if group is None or not text:
            return JsonResponse({"error": "choose one of your groups and write a message"}, status=400)
        RedisPublisher(facility="groupchat", groups=[group.name]).publish_message(
            f"{request.user.get_username()} @ {group.name}: {text}"
        )
        return JsonResponse({"sent": True})
    return render(request, "chat/groupchat.html", {"groups": groups, "all_groups": Group.objects.order_by("name")})


@require_http_methods(["GET", "POST"])
def counter(request: HttpRequest) -> HttpResponse:
    """A live counter: every click is counted in Redis and pushed to every open page."""
    client = get_client()
    if request.method == "POST":
        value = client.incr("demo:clicks")
        RedisPublisher(facility="counter", broadcast=True).publish_message(str(value))
        if request.user.is_authenticated:
            RedisPublisher(facility="notifications", users=[SELF], request=request).publish_message(
                f"You clicked; the counter is at {value}"
            )
        return JsonResponse({"value": value})
    return render(request, "chat/counter.html", {"value": int(client.get("demo:clicks") or 0)})
