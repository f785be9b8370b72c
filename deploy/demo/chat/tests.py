"""The demo's tests, written with ws4redis_uwsgi.testing as a project of its own would write them.

``python manage.py test chat`` runs them (tests/integration/test_demo_project.py
does, in `make test`). The view tests capture what the chat views publish and
need no Redis; the live tests start a redis-server and a uWSGI websocket
worker for these settings and the test database, and listen as the users.
"""

from django.contrib.auth.models import Group, User
from django.test import TestCase

from ws4redis_uwsgi.testing import LiveWebsocketTestCase, capture_publishes


def chat_users():
    """john and mary, both cooks; mary is staff too."""
    cooks, staff = Group.objects.create(name="cooks"), Group.objects.create(name="staff")
    john = User.objects.create_user("john")
    john.groups.add(cooks)
    mary = User.objects.create_user("mary")
    mary.groups.add(cooks, staff)
    return john, mary


class ChatViewsPublishTest(TestCase):
    """What the views publish, captured: no Redis, no websocket worker."""

    def setUp(self):
        self.john, self.mary = chat_users()
        self.client.force_login(self.mary)

    def test_a_user_message_goes_to_the_recipient_and_the_sender(self):
        with capture_publishes() as published:
            response = self.client.post("/userchat/", {"user": "john", "message": "dinner at eight?"})
        self.assertEqual(response.json(), {"sent": True})
        publish = published.one(facility="userchat")
        self.assertEqual(publish.text, "mary → john: dinner at eight?")
        self.assertEqual(publish.users, ("john", "mary"))  # SELF: the sender sees it in their own window
        self.assertFalse(publish.broadcast)

    def test_a_message_to_nobody_publishes_nothing(self):
        with capture_publishes() as published:
            response = self.client.post("/userchat/", {"user": "nobody", "message": "hello?"})
        self.assertEqual(response.status_code, 400)
        published.assert_none()

    def test_a_group_message_goes_to_the_group_only_from_a_member(self):
        with capture_publishes() as published:
            self.client.post("/groupchat/", {"group": "staff", "message": "meeting"})
            self.client.force_login(self.john)
            refused = self.client.post("/groupchat/", {"group": "staff", "message": "may I?"})
        self.assertEqual(refused.status_code, 400)
        self.assertEqual(published.one(group="staff").text, "mary @ staff: meeting")
        self.assertEqual(len(published), 1)


class LiveChatTest(LiveWebsocketTestCase):
    """The views and a real websocket worker: what each user's browser receives."""

    def setUp(self):
        super().setUp()
        self.john, self.mary = chat_users()

    def test_john_and_mary_see_a_user_message_and_nobody_else_does(self):
        erin = User.objects.create_user("erin")
        johns_page = self.websocket("userchat", "subscribe-user", user=self.john)
        erins_page = self.websocket("userchat", "subscribe-user", user=erin)
        self.client.force_login(self.mary)
        marys_page = self.websocket("userchat", "subscribe-user", client=self.client)

        self.client.post("/userchat/", {"user": "john", "message": "dinner at eight?"})

        johns_page.assert_receives("mary → john: dinner at eight?")
        marys_page.assert_receives("mary → john: dinner at eight?")
        erins_page.assert_nothing(within=0.5)

    def test_a_group_message_reaches_the_members(self):
        cook = self.websocket("groupchat", "subscribe-group", user=self.john)
        self.client.force_login(self.mary)
        self.client.post("/groupchat/", {"group": "cooks", "message": "soup is ready"})
        cook.assert_receives("mary @ cooks: soup is ready")

    def test_a_click_on_the_counter_reaches_every_page_and_notifies_the_clicker(self):
        anonymous_page = self.websocket("counter")
        johns_notifications = self.websocket("notifications", "subscribe-user", user=self.john)
        self.client.force_login(self.john)
        self.assertEqual(self.client.post("/counter/").json(), {"value": 1})  # each test starts with an empty Redis
        anonymous_page.assert_receives("1")
        johns_notifications.assert_receives("You clicked; the counter is at 1")
