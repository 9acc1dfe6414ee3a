"""fedgov's URLs: the web UI, the REST API under /api/v1/, its schema and docs, the admin."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from federation import i18n
from federation.web import accounts
from fedgov.throttles import ThrottledAdminAuthenticationForm

# Both login pages refuse a client or username after repeated wrong passwords (fedgov.throttles).
admin.site.login_form = ThrottledAdminAuthenticationForm


def admin_login(request, extra_context=None):
    # The throttled admin login with the one-time-code step (federation.web.accounts).
    return accounts.admin_login(request, extra_context)


class FaviconView(RedirectView):
    """Browsers, feed readers and crawlers ask for /favicon.ico whatever a page links: the
    project's one icon is an SVG (read per request, so the static files' manifest is used)."""

    permanent = True

    def get_redirect_url(self, *args, **kwargs) -> str:
        return static("favicon.svg")


urlpatterns = [
    path("favicon.ico", FaviconView.as_view()),
    path("admin/login/", admin_login),  # before admin.site.urls, which it answers for
    path("admin/", admin.site.urls),
    path("accounts/login/", accounts.TwoFactorLoginView.as_view(), name="login"),
    path("accounts/login/code/", accounts.login_verify, name="account_login_verify"),
    path("accounts/logout/", accounts.SignOutView.as_view(), name="logout"),
    path("accounts/password/change/", accounts.password_change, name="password_change"),
    path("accounts/password/change/done/", accounts.password_change_done, name="password_change_done"),
    path("accounts/password/reset/", accounts.password_reset, name="password_reset"),
    path("accounts/password/reset/sent/", accounts.password_reset_done, name="password_reset_done"),
    path("accounts/reset/<uidb64>/<token>/", accounts.password_reset_confirm, name="password_reset_confirm"),
    path("accounts/reset/done/", accounts.password_reset_complete, name="password_reset_complete"),
    path("account/two-factor/", accounts.two_factor, name="account_two_factor"),
    path("account/tokens/", accounts.token_list, name="account_tokens"),
    path("account/tokens/<int:pk>/revoke/", accounts.token_revoke, name="account_token_revoke"),
    # The language switcher's form posts here (federation.i18n): cookie, and the user's choice.
    path("i18n/setlang/", i18n.set_language, name="set_language"),
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
