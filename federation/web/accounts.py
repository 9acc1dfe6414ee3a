"""Account pages: signing out, the login's one-time-code step, the TOTP device, API tokens, and
password change and reset (Django's own views, with fedgov's templates).

No domain logic here: tokens go through `services.tokens`, who owes a code and the devices are
`twofactor`'s.
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
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from fedgov.throttles import ThrottledLoginView, locked_out_is_429

from .. import twofactor
from ..forms_accounts import CodeForm, TokenCreateForm
from ..selectors import organisations as organisation_selectors
from ..selectors import tokens as token_selectors
from ..services import tokens as token_services
from .base import attempt, role_context, safe_target, web_view

MSG_CODE_WRONG = gettext_lazy("That code is not right (or was already used); try the current one.")
MSG_PENDING_EXPIRED = gettext_lazy("Sign in again: the one-time code must follow the password within five minutes.")
MSG_DEVICE_REQUIRED = gettext_lazy("Administrators sign in with a one-time code; you cannot remove your device.")


MSG_SIGNED_OUT = "You have signed out."


class SignOutView(auth_views.LogoutView):
    """Log out and say so on the login page (issue 17: a silent logout leaves people unsure)."""

    def post(self, request, *args, **kwargs):
        was_signed_in = request.user.is_authenticated
        response = super().post(request, *args, **kwargs)
        if was_signed_in:
            # The session is flushed by now; the message storage falls back to its cookie.
            messages.info(request, MSG_SIGNED_OUT)
        return response


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
        next_url = safe_target(request, request.POST.get("next") or "", reverse("admin:index"))
        logout(request)
        twofactor.start_pending(request, user, next_url=next_url)
        return redirect("account_login_verify")
    return response


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
        device = twofactor.enrolment_device(user)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and _check_code(device, form):
        next_url = safe_target(request, twofactor.pending_next(request), settings.LOGIN_REDIRECT_URL)
        with transaction.atomic():
            if enrolling:
                twofactor.device_confirm(device)
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
        pending = twofactor.enrolment_device(user)
        if _check_code(pending, form):
            twofactor.device_confirm(pending)
            otp_login(request, pending)  # this session just proved the code
            messages.success(request, _("Two-factor sign-in is on: the next login asks for a code."))
            return redirect("account_two_factor")
    elif request.method == "POST" and action == "remove" and device is not None:
        if required:
            messages.error(request, MSG_DEVICE_REQUIRED)
            return redirect("account_two_factor")
        if _check_code(device, form):
            twofactor.devices_remove(user)
            messages.success(request, _("Two-factor sign-in is off."))
            return redirect("account_two_factor")
    elif request.method == "POST":
        return redirect("account_two_factor")
    context = {**role_context(user), "device": device, "form": form, "required": required}
    if device is None:
        context.update(_enrolment_context(twofactor.enrolment_device(user)))
    return render(request, "accounts/two_factor.html", context)


# --- API tokens --------------------------------------------------------------------------------


@web_view
@require_http_methods(["GET", "POST"])
def token_list(request):
    """The user's tokens; create one (its key shown once, on the page that answers the POST)."""
    user = request.user
    agent = organisation_selectors.is_agent_user(user=user)
    form = TokenCreateForm(request.POST if request.method == "POST" else None, agent=agent)
    new_key = new_token = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        done = attempt(
            request, token_services.token_issue, form=form, actor=user, user=user, scopes=data["scopes"], name=data["name"],
            expires_in_days=data["expires_in_days"],
        )  # fmt: skip
        if done.ok:
            new_token, new_key = done.value
            form = TokenCreateForm(agent=agent)
    tokens = token_selectors.own_tokens(user=user)
    response = render(
        request,
        "accounts/tokens.html",
        {**role_context(user), "tokens": tokens, "form": form, "new_key": new_key, "new_token": new_token},
    )
    if new_key:
        response["Cache-Control"] = "no-store"  # the key is on this page once; no cache keeps it
    return response


@web_view
@require_POST
def token_revoke(request, pk: int):
    token = token_selectors.own_token(user=request.user, pk=pk)
    token_services.token_revoke(actor=request.user, token=token)
    messages.success(request, _("Token %(prefix)s… is revoked; requests with it now get 401.") % {"prefix": token.prefix})
    return redirect("account_tokens")


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
