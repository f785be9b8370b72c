from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("login/", auth_views.LoginView.as_view(template_name="chat/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("broadcast/", views.page, {"template": "chat/broadcast.html"}, name="broadcast"),
    path("session/", views.page, {"template": "chat/session.html"}, name="session"),
    path("userchat/", views.user_chat, name="userchat"),
    path("groupchat/", views.group_chat, name="groupchat"),
    path("counter/", views.counter, name="counter"),
]
