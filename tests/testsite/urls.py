from django.urls import path

from tests.testsite import views

urlpatterns = [path("page/", views.page)]
