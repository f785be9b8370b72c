"""Create the demo users and groups once: john, mary and erin, password "demo"."""

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

USERS = {"john": ["cooks"], "mary": ["cooks", "staff"], "erin": ["staff"]}
PASSWORD = "demo"


class Command(BaseCommand):
    help = "Create the demo users (john, mary, erin; password 'demo') and their groups."

    def handle(self, *args, **options):
        for username, group_names in USERS.items():
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(PASSWORD)
                user.save()
            for name in group_names:
                user.groups.add(Group.objects.get_or_create(name=name)[0])
        self.stdout.write(", ".join(f"{u} ({', '.join(g)})" for u, g in USERS.items()) + f"; password: {PASSWORD}")
