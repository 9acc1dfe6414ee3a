"""Response headers Django's SecurityMiddleware does not set (Content-Security-Policy)."""

from django.conf import settings


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        # The Swagger UI page carries an inline bootstrap script, so the API docs get a
        # policy of their own; everything else runs with no inline script at all.
        if not request.path.startswith("/api/docs"):
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response
