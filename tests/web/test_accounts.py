"""Accounts: the TOTP second factor, API tokens in the UI, password change, removing members."""

from __future__ import annotations

import re

import pytest
from django.test import Client, override_settings
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from federation.models import ApiToken, GovernanceEvent, Membership
from federation.services.organisations import LastRepresentative, membership_remove
from federation.services.tokens import token_issue

pytestmark = pytest.mark.django_db


def _code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def _login(client: Client, username: str, path: str = "/accounts/login/"):
    return client.post(path, {"username": username, "password": "pw", "next": "/"})


def _dashboard_status(client: Client) -> int:
    return client.get("/").status_code


# --- TOTP -----------------------------------------------------------------------------------------


def test_administrator_with_totp_cannot_log_in_without_the_code(cast):
    device = TOTPDevice.objects.create(user=cast.admin, name="phone", confirmed=True)
    client = Client()
    response = _login(client, "admin")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/code/"
    assert _dashboard_status(client) == 302  # the password alone opened no session
    assert "_auth_user_id" not in client.session
    wrong = client.post("/accounts/login/code/", {"code": f"{(int(_code(device)) + 1) % 1000000:06d}"})
    assert wrong.status_code == 200 and "not right" in wrong.content.decode()
    assert _dashboard_status(client) == 302
    device.refresh_from_db()
    device.throttling_failure_count = 0  # the wrong code above throttles the next try for a second
    device.throttling_failure_timestamp = None
    device.save()
    right = client.post("/accounts/login/code/", {"code": _code(device)})
    assert right.status_code == 302 and right["Location"] == "/"
    assert _dashboard_status(client) == 200


def test_the_admin_login_asks_for_the_code_too(cast):
    cast.admin.is_staff = True
    cast.admin.save()
    device = TOTPDevice.objects.create(user=cast.admin, name="phone", confirmed=True)
    client = Client()
    response = client.post("/admin/login/", {"username": "admin", "password": "pw", "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/code/"
    assert client.get("/admin/").status_code == 302
    assert client.post("/accounts/login/code/", {"code": _code(device)})["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_user_without_a_device_logs_in_with_the_password_alone(cast):
    client = Client()
    assert _login(client, "rep-a")["Location"] == "/"
    assert _dashboard_status(client) == 200


@override_settings(FEDGOV_REQUIRE_ADMIN_2FA=True)
def test_required_2fa_makes_an_administrator_enrol_before_the_session_opens(cast):
    client = Client()
    assert _login(client, "admin")["Location"] == "/accounts/login/code/"
    page = client.get("/accounts/login/code/").content.decode()
    assert "otpauth://totp/" in page and "<svg" in page
    device = TOTPDevice.objects.get(user=cast.admin, confirmed=False)
    assert _dashboard_status(client) == 302
    assert client.post("/accounts/login/code/", {"code": _code(device)})["Location"] == "/"
    device.refresh_from_db()
    assert device.confirmed and _dashboard_status(client) == 200
    # Representatives are not administrators: no code for them.
    assert _login(Client(), "rep-a")["Location"] == "/"


@override_settings(FEDGOV_REQUIRE_ADMIN_2FA=True)
def test_required_2fa_ends_an_administrator_session_that_gave_no_code(cast, as_user):
    client = as_user(cast.admin)  # a session opened without the code step
    response = client.get("/agreements/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert "_auth_user_id" not in client.session


def test_the_api_password_exchange_refuses_a_user_who_owes_a_code(cast):
    TOTPDevice.objects.create(user=cast.admin, name="phone", confirmed=True)
    response = Client().post(
        "/api/v1/auth/token/", {"username": "admin", "password": "pw", "scopes": ["read"]}, content_type="application/json"
    )
    assert response.status_code == 403 and response.json()["code"] == "second_factor_required"
    assert not ApiToken.objects.filter(user=cast.admin).exists()


def test_a_user_enrols_a_device_on_the_account_page(cast, as_user):
    client = as_user(cast.rep_a)
    page = client.get("/account/two-factor/").content.decode()
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    device = TOTPDevice.objects.get(user=cast.rep_a, confirmed=False)
    assert client.post("/account/two-factor/", {"action": "confirm", "code": _code(device)}).status_code == 302
    assert TOTPDevice.objects.get(user=cast.rep_a).confirmed and len(secret) >= 16
    assert _login(Client(), "rep-a")["Location"] == "/accounts/login/code/"


# --- API tokens in the UI -----------------------------------------------------------------------


def test_a_representative_creates_and_revokes_a_token_in_the_ui(cast, as_user):
    client = as_user(cast.rep_a)
    page = client.post("/account/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": "30"})
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    key = re.search(r'id="new-token-key">(fg_[^<]+)<', page.content.decode()).group(1)
    api = Client()
    assert api.get("/api/v1/agreements/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    token = ApiToken.objects.get(user=cast.rep_a, name="ci")
    assert token.scopes == ["read"] and 29 <= (token.expires_at - token.created_at).days <= 30
    listing = client.get("/account/tokens/").content.decode()
    assert token.prefix in listing and key not in listing  # the key is shown once
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 302
    assert api.get("/api/v1/agreements/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 401


def test_the_token_page_keeps_the_services_rules(cast, as_user):
    client = as_user(cast.rep_a)
    refused = client.post("/account/tokens/", {"scopes": ["agent"], "expires_in_days": "30"})
    assert refused.status_code == 200 and not ApiToken.objects.filter(user=cast.rep_a).exists()
    assert client.post("/account/tokens/", {"scopes": ["read"], "expires_in_days": "0"}).status_code == 200
    assert not ApiToken.objects.filter(user=cast.rep_a).exists()
    other, _ = token_issue(actor=cast.rep_b, user=cast.rep_b, scopes=["read"])
    assert client.post(f"/account/tokens/{other.pk}/revoke/").status_code == 404
    other.refresh_from_db()
    assert other.revoked_at is None


# --- Password change ------------------------------------------------------------------------------


def test_a_user_changes_their_password(cast, as_user):
    client = as_user(cast.rep_a)
    response = client.post(
        "/accounts/password/change/",
        {"old_password": "pw", "new_password1": "a-Longer-passphrase-42", "new_password2": "a-Longer-passphrase-42"},
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/password/change/done/"
    cast.rep_a.refresh_from_db()
    assert cast.rep_a.check_password("a-Longer-passphrase-42")
    assert _dashboard_status(client) == 200  # the session survives its own password change


# --- Removing members -------------------------------------------------------------------------


def test_an_administrator_removes_a_member_on_the_organisation_page(cast, as_user):
    from tests.factories import UserFactory, member

    member(UserFactory(username="rep-a2"), cast.org_a)
    m = Membership.objects.get(user__username="rep-a2", organisation=cast.org_a)
    client = as_user(cast.admin)
    assert f"/organisations/org-a/members/{m.pk}/remove/" in client.get("/organisations/org-a/").content.decode()
    assert client.post(f"/organisations/org-a/members/{m.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=m.pk).exists()
    event = GovernanceEvent.objects.get(kind=GovernanceEvent.Kind.MEMBER_REMOVED)
    assert event.agreement == cast.agreement and event.details["user"] == "rep-a2"


def test_the_last_representative_of_a_party_to_a_live_agreement_stays(cast, as_user):
    m = Membership.objects.get(user=cast.rep_a, organisation=cast.org_a, role=Membership.Role.REPRESENTATIVE)
    with pytest.raises(LastRepresentative):
        membership_remove(actor=cast.admin, membership=m)
    response = as_user(cast.admin).post(f"/organisations/org-a/members/{m.pk}/remove/", follow=True)
    assert "last representative" in response.content.decode()
    assert Membership.objects.filter(pk=m.pk).exists()
    api = Client()
    api.force_login(cast.admin)
    refused = api.delete(f"/api/v1/memberships/{m.pk}/")
    assert refused.status_code == 409 and refused.json()["code"] == "last_representative"


def test_removing_an_agent_membership_revokes_its_agent_tokens(cast):
    token, key = token_issue(actor=cast.admin, user=cast.agent_a, scopes=["agent"])
    m = Membership.objects.get(user=cast.agent_a, role=Membership.Role.AGENT)
    membership_remove(actor=cast.admin, membership=m)
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_only_an_administrator_removes_members(cast, as_user):
    m = Membership.objects.get(user=cast.agent_a, role=Membership.Role.AGENT)
    assert as_user(cast.rep_a).post(f"/organisations/org-a/members/{m.pk}/remove/").status_code == 403
    assert as_user(cast.outsider).post(f"/organisations/org-a/members/{m.pk}/remove/").status_code == 404
    assert Membership.objects.filter(pk=m.pk).exists()
