"""No pages: the bench sites serve websockets only."""

urlpatterns: list = []
