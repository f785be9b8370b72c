from django.apps import AppConfig


class Ws4RedisConfig(AppConfig):
    name = "ws4redis_uwsgi"
    verbose_name = "Websockets for Redis (uWSGI)"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
