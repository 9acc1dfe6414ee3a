"""The UI's language: English or French (settings.LANGUAGES), per person or per browser.

Order of precedence, highest first:

1. a signed-in person's stored choice (`UserPreference.language`), applied by
   `UserLanguageMiddleware` after authentication, so it follows them to any browser;
2. the language cookie that `set_language` writes (Django's LocaleMiddleware reads it);
3. the browser's Accept-Language (LocaleMiddleware);
4. settings.LANGUAGE_CODE.

`set_language` is Django's view (POST /i18n/setlang/, a plain form: no script, the site runs
under a strict Content-Security-Policy) that also stores the choice of a signed-in person.
API error messages stay in English: they are read by programs and carry stable codes.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django.views.i18n import set_language as django_set_language

from .models import UserPreference

LANGUAGE_CODES = frozenset(code for code, _name in settings.LANGUAGES)


def stored_language(user) -> str | None:
    """The language `user` chose, or None (anonymous, or never chose one)."""
    if not getattr(user, "is_authenticated", False):
        return None
    language = UserPreference.objects.filter(user=user).values_list("language", flat=True).first()
    return language if language in LANGUAGE_CODES else None


class UserLanguageMiddleware:
    """Activates a signed-in person's stored language (after AuthenticationMiddleware)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        language = stored_language(getattr(request, "user", None))
        if language:
            translation.activate(language)
            request.LANGUAGE_CODE = language
        return self.get_response(request)


@require_POST
def set_language(request):
    """Django's set_language (cookie and redirect to `next`), plus the person's stored choice."""
    response = django_set_language(request)
    language = request.POST.get("language", "")
    if language in LANGUAGE_CODES and request.user.is_authenticated:
        UserPreference.objects.update_or_create(user=request.user, defaults={"language": language})
    return response


def verification_line(result) -> str:
    """accounting.audit.VerifyResult.line() in the active language, for the pages; the same
    text as line() in English (the command line and the audit bundle keep line()). The reason
    of a failure is the verifier's own text, in English like every stored domain message."""
    if not result.ok:
        return _("FAILED %(error)s") % {"error": result.error}
    text = _("OK %(dataset)s: %(entries)s entries, %(heads)s signed heads, epsilon spent %(spent)s of %(budget)s") % {
        "dataset": result.dataset,
        "entries": result.entries,
        "heads": result.signed_heads,
        "spent": f"{result.epsilon_spent:.6g}",
        "budget": f"{result.epsilon_budget:.6g}",
    }
    if result.open_reservations:
        text += _(", open reservations: rounds %(rounds)s") % {"rounds": result.open_reservations}
    return text


def in_english(value) -> str:
    """A translatable label (a choice's label, say) as English text, whatever language the
    request is in: for the records the domain writes (event messages, governance reasons, error
    messages), which stay in one language, English, like the API (docs/I18N.md)."""
    with translation.override("en"):
        return str(value)
