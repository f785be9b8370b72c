from django.urls import path

from tests.testsite import views
from ws4redis_uwsgi.django.views import websocket_token

urlpatterns = [path("page/", views.page), path("ws4redis/token", websocket_token)]
