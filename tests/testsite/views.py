"""A page of the test site, served by the development server next to its websockets."""

from django.http import HttpRequest, HttpResponse


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a page of the test site", content_type="text/plain")
