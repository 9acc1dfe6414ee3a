"""Response headers Django's SecurityMiddleware does not set (Content-Security-Policy)."""

from django.conf import settings

# Swagger UI (/api/docs/, served by drf-spectacular's split view from the sidecar's static
# files) needs two things the site-wide policy refuses: the page's small inline <style> block
# and style attributes its React components set. Scripts stay 'self' only: the split view
# serves the bootstrap script as a file, so no inline script runs anywhere.
DOCS_PATH = "/api/docs/"
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        policy = DOCS_CONTENT_SECURITY_POLICY if request.path == DOCS_PATH else settings.CONTENT_SECURITY_POLICY
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response
