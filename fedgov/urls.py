"""fedgov's URLs: the web UI, the REST API under /api/v1/, its schema and docs, the admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from fedgov.throttles import ThrottledAdminAuthenticationForm, ThrottledLoginView, locked_out_is_429

# Both login pages refuse a client or username after repeated wrong passwords (fedgov.throttles).
admin.site.login_form = ThrottledAdminAuthenticationForm


def admin_login(request, extra_context=None):
    return locked_out_is_429(admin.site.login(request, extra_context))


urlpatterns = [
    path("admin/login/", admin_login),  # before admin.site.urls, which it answers for
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's bootstrap as a script file of its own (?script=), so
    # the page runs under a script-src 'self' policy: no inline script, no CDN.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/agent/", include("federation.api.agent_urls")),
    path("api/v1/", include("federation.api.urls")),
    path("notifications/", include("notifications.urls")),
    path("", include("federation.urls")),
]

# Errors raised before a view runs (a malformed id, an unknown path) answer in the API's JSON
# error body under /api/, and with Django's HTML pages everywhere else.
handler400 = "federation.api.errors.bad_request"
handler403 = "federation.api.errors.permission_denied"
handler404 = "federation.api.errors.page_not_found"
handler500 = "federation.api.errors.server_error"
