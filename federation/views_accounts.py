"""Account pages: the login's one-time-code step, the TOTP device, API tokens, password change and
reset (Django's own views, with fedgov's templates), and removing a member from an organisation.

As in `views`, no domain logic here: tokens go through `services.tokens`, memberships through
`services.organisations`, who owes a code is `twofactor`'s rule.
"""

from __future__ import annotations

import base64

import segno
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout
from django.contrib.auth import views as auth_views
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from fedgov.errors import ApplicationError, ValidationFailed
from fedgov.throttles import ThrottledLoginView, locked_out_is_429

from . import forms, selectors, twofactor
from .access import require_administrator
from .forms_accounts import CodeForm, TokenCreateForm
from .models import ApiToken, Membership
from .services import organisations as organisation_services
from .services import tokens as token_services
from .views import _role_context, web_view

MSG_CODE_WRONG = gettext_lazy("That code is not right (or was already used); try the current one.")
MSG_PENDING_EXPIRED = gettext_lazy("Sign in again: the one-time code must follow the password within five minutes.")
MSG_DEVICE_REQUIRED = gettext_lazy("Administrators sign in with a one-time code; you cannot remove your device.")


def _safe(request, target: str, default: str) -> str:
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


# --- Login: password, then (when owed) the one-time code ---------------------------------------


class TwoFactorLoginView(ThrottledLoginView):
    """The throttled password login; a user who owes a code gets the code step instead of a
    session (`twofactor`)."""

    def form_valid(self, form):
        user = form.get_user()
        if twofactor.needs_second_factor(user):
            twofactor.start_pending(self.request, user, next_url=self.get_redirect_url() or settings.LOGIN_REDIRECT_URL)
            return redirect("account_login_verify")
        return super().form_valid(form)


def admin_login(request, extra_context=None):
    """The admin's throttled login, with the same code step: a right password of a user who owes
    a code opens no admin session; the code step follows, then the admin."""
    response = locked_out_is_429(admin.site.login(request, extra_context))
    user = request.user
    # A POST that logged someone in did it with the password alone (request.user is the freshly
    # logged-in user, never verified): whoever owes a code gets the code step instead.
    if request.method == "POST" and user.is_authenticated and twofactor.needs_second_factor(user):
        next_url = _safe(request, request.POST.get("next") or "", reverse("admin:index"))
        logout(request)
        twofactor.start_pending(request, user, next_url=next_url)
        return redirect("account_login_verify")
    return response


def _enrolment_device(user) -> TOTPDevice:
    """The user's unconfirmed device (its secret shown until a code confirms it), made once."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    return device


def _enrolment_context(device: TOTPDevice) -> dict:
    uri = device.config_url
    qr = segno.make(uri, error="m").svg_inline(scale=4, dark="#111", light="#fff", omitsize=False)
    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
    return {"otpauth_uri": uri, "qr_svg": qr, "secret": secret}


def _check_code(device: TOTPDevice, form: CodeForm) -> bool:
    if not form.is_valid():
        return False
    if device.verify_token(form.token()):  # throttled by django-otp after each failure
        return True
    form.add_error("code", MSG_CODE_WRONG)
    return False


@require_http_methods(["GET", "POST"])
def login_verify(request):
    """The second step: the code of the user's device, or (an administrator who must use one and
    has none yet) enrolment of a device, confirmed by its first code."""
    user = twofactor.pending_user(request)
    if user is None:
        messages.error(request, MSG_PENDING_EXPIRED)
        return redirect(settings.LOGIN_URL)
    device = twofactor.confirmed_device(user)
    enrolling = device is None
    if enrolling:
        device = _enrolment_device(user)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and _check_code(device, form):
        next_url = _safe(request, twofactor.pending_next(request), settings.LOGIN_REDIRECT_URL)
        with transaction.atomic():
            if enrolling:
                device.confirmed = True
                device.save(update_fields=["confirmed"])
            twofactor.clear_pending(request)
            auth_login(request, user, backend=user.backend)
            otp_login(request, device)
        return redirect(next_url)
    context = {"form": form, "enrolling": enrolling, "pending_username": user.username}
    if enrolling:
        context.update(_enrolment_context(device))
    return render(request, "accounts/login_verify.html", context)


# --- The user's own TOTP device ----------------------------------------------------------------


@web_view
@require_http_methods(["GET", "POST"])
def two_factor(request):
    """Enrol a TOTP device (secret, otpauth URI and QR code; confirmed by a first code) or
    remove it (with a current code; not when administrators must use one)."""
    user = request.user
    device = twofactor.confirmed_device(user)
    action = request.POST.get("action")
    form = CodeForm(request.POST if request.method == "POST" else None)
    required = settings.FEDGOV_REQUIRE_ADMIN_2FA and twofactor.is_administrator(user)
    if request.method == "POST" and action == "confirm" and device is None:
        pending = _enrolment_device(user)
        if _check_code(pending, form):
            pending.confirmed = True
            pending.save(update_fields=["confirmed"])
            otp_login(request, pending)  # this session just proved the code
            messages.success(request, _("Two-factor sign-in is on: the next login asks for a code."))
            return redirect("account_two_factor")
    elif request.method == "POST" and action == "remove" and device is not None:
        if required:
            messages.error(request, MSG_DEVICE_REQUIRED)
            return redirect("account_two_factor")
        if _check_code(device, form):
            TOTPDevice.objects.filter(user=user).delete()
            messages.success(request, _("Two-factor sign-in is off."))
            return redirect("account_two_factor")
    elif request.method == "POST":
        return redirect("account_two_factor")
    context = {**_role_context(user), "device": device, "form": form, "required": required}
    if device is None:
        context.update(_enrolment_context(_enrolment_device(user)))
    return render(request, "accounts/two_factor.html", context)


# --- API tokens --------------------------------------------------------------------------------


@web_view
@require_http_methods(["GET", "POST"])
def token_list(request):
    """The user's tokens; create one (its key shown once, on the page that answers the POST)."""
    user = request.user
    agent = Membership.objects.filter(user=user, role=Membership.Role.AGENT).exists()
    form = TokenCreateForm(request.POST if request.method == "POST" else None, agent=agent)
    new_key = new_token = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            new_token, new_key = token_services.token_issue(
                actor=user, user=user, scopes=data["scopes"], name=data["name"], expires_in_days=data["expires_in_days"]
            )
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc, {"scopes": "scopes", "expires_in_days": "expires_in_days"})
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            form = TokenCreateForm(agent=agent)
    tokens = ApiToken.objects.filter(user=user).order_by("-created_at")
    response = render(
        request,
        "accounts/tokens.html",
        {**_role_context(user), "tokens": tokens, "form": form, "new_key": new_key, "new_token": new_token},
    )
    if new_key:
        response["Cache-Control"] = "no-store"  # the key is on this page once; no cache keeps it
    return response


@web_view
@require_POST
def token_revoke(request, pk: int):
    token = ApiToken.objects.filter(pk=pk, user=request.user).first()
    if token is None:
        raise Http404(_("Token not found."))
    token_services.token_revoke(actor=request.user, token=token)
    messages.success(request, _("Token %(prefix)s… is revoked; requests with it now get 401.") % {"prefix": token.prefix})
    return redirect("account_tokens")


# --- Members of an organisation ----------------------------------------------------------------


@web_view
@require_POST
def member_remove(request, slug: str, pk: int):
    require_administrator(request.user, what="membership", action="remove")
    org = selectors.organisation_for(request.user, slug)
    membership = Membership.objects.filter(pk=pk, organisation=org).select_related("user").first()
    if membership is None:
        raise Http404(_("Membership not found."))
    try:
        organisation_services.membership_remove(actor=request.user, membership=membership)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            _("%(user)s is no longer %(role)s of %(org)s.")
            % {"user": membership.user.username, "role": membership.get_role_display().lower(), "org": org.name},
        )
    return redirect("web:organisation_detail", slug=org.slug)


# --- Passwords: Django's views, fedgov's templates -------------------------------------------------

password_change = auth_views.PasswordChangeView.as_view(
    template_name="accounts/password_change_form.html", success_url=reverse_lazy("password_change_done")
)
password_change_done = auth_views.PasswordChangeDoneView.as_view(template_name="accounts/password_change_done.html")
password_reset = auth_views.PasswordResetView.as_view(
    template_name="accounts/password_reset_form.html",
    email_template_name="accounts/password_reset_email.txt",
    subject_template_name="accounts/password_reset_subject.txt",
    success_url=reverse_lazy("password_reset_done"),
)
password_reset_done = auth_views.PasswordResetDoneView.as_view(template_name="accounts/password_reset_done.html")
password_reset_confirm = auth_views.PasswordResetConfirmView.as_view(
    template_name="accounts/password_reset_confirm.html", success_url=reverse_lazy("password_reset_complete")
)
password_reset_complete = auth_views.PasswordResetCompleteView.as_view(template_name="accounts/password_reset_complete.html")
