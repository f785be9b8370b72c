"""The Channels peer: ``daphne peersite.asgi_channels:application``.

A minimal consumer: it joins the facility's group when the socket connects
(``groups``) and forwards every group message of type ``broadcast.message``
to the socket as it is. The same URL as the ws4redis peers, query ignored.
Channels' AuthMiddlewareStack loads the session and user of the cookie
before the consumer runs; a logged-in user's socket also joins a group for
the user and one for each of the user's Django groups, as the two ws4redis
peers subscribe for ``subscribe-user&subscribe-group``.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peersite.settings_channels")

import django

django.setup()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.db import database_sync_to_async  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

#: The group every client joins; the harness sends to it with ``group_send``.
GROUP = "bench"


class BroadcastConsumer(AsyncWebsocketConsumer):
    groups = [GROUP]  # joined in websocket_connect, before connect() accepts

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            names = await database_sync_to_async(lambda: list(user.groups.values_list("name", flat=True)))()
            for group in [f"user.{user.get_username()}", *(f"group.{name}" for name in names)]:
                await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def broadcast_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        # The Origin check, as the two ws4redis peers have one (against ALLOWED_HOSTS).
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([path("ws/bench", BroadcastConsumer.as_asgi())]))),
    }
)
