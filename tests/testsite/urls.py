from django.urls import include, path

from tests.testsite import views
from ws4redis_uwsgi.django.views import websocket_token

urlpatterns = [
    path("page/", views.page),
    path("async-publish/", views.publish_async),
    path("ws4redis/token", websocket_token),
    # Django's own views (password change) for the live authorization tests.
    path("accounts/", include("django.contrib.auth.urls")),
]
