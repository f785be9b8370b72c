from django.apps import AppConfig


class Ws4RedisConfig(AppConfig):
    name = "ws4redis_uwsgi"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Websockets for Redis (uWSGI)"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from . import checks  # noqa: F401 - registers the system checks
        from .bus import live_auth
        from .bus.revocations import on_logout

        user_logged_out.connect(on_logout, dispatch_uid="ws4redis_uwsgi.tokens")
        live_auth.connect()
