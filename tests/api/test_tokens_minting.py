"""Minting tokens: a token never creates a token that outranks or outlives it, or that is
someone else's, and revoking a token revokes every token minted from it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from federation.models import ApiToken
from federation.services.tokens import (
    MSG_MINT_OTHER_USER,
    MSG_MINT_SCOPE,
    MSG_PARENT_INVALID,
    MSG_SCOPE_ESCALATION,
    TokenMintingRefused,
    token_issue,
    token_revoke,
)

URL = "/api/v1/tokens/"


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def issued(user, scopes, days: int | None = 90):
    token, key = token_issue(actor=user, user=user, scopes=scopes, expires_in_days=days)
    return token, client_for(key)


def mint(client, **body):
    return client.post(URL, {"scopes": ["read"], **body}, format="json")


def test_a_read_token_cannot_mint(cast):
    _, client = issued(cast.rep_a, ["read"], days=1)
    refused = mint(client, expires_in_days=None)
    assert refused.status_code == 403
    assert refused.json() == {"code": "permission_denied", "message": "This token lacks the 'approve' scope.", "details": {}}
    assert ApiToken.objects.count() == 1


def test_a_trigger_token_cannot_mint_either(cast):
    _, client = issued(cast.rep_a, ["read", "trigger"])
    assert mint(client).status_code == 403
    assert ApiToken.objects.count() == 1


def test_the_service_refuses_a_parent_without_approve(cast):
    parent, _ = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read", "trigger"])
    with pytest.raises(TokenMintingRefused) as refused:
        token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"], parent=parent)
    assert str(refused.value) == MSG_MINT_SCOPE


def test_a_write_token_mints_a_child_within_its_scopes_and_lifetime(cast):
    parent, client = issued(cast.rep_a, ["read", "approve"], days=1)
    created = mint(client, scopes=["read"], expires_in_days=30, name="ci")
    assert created.status_code == 201, created.json()
    child = ApiToken.objects.get(pk=created.json()["id"])
    assert child.parent == parent and child.user == cast.rep_a and child.scopes == ["read"]
    assert child.expires_at == parent.expires_at  # asked for 30 days, the parent has one
    assert created.json()["parent"] == parent.pk
    # The child works.
    assert client_for(created.json()["key"]).get("/api/v1/agreements/").status_code == 200


def test_a_child_of_an_expiring_token_never_lives_forever(cast):
    parent, client = issued(cast.rep_a, ["read", "approve"], days=2)
    created = mint(client, expires_in_days=None)
    assert created.status_code == 201
    assert ApiToken.objects.get(pk=created.json()["id"]).expires_at == parent.expires_at


def test_a_shorter_lifetime_than_the_parents_is_kept(cast):
    parent, client = issued(cast.rep_a, ["read", "approve"], days=90)
    before = timezone.now()
    created = mint(client, expires_in_days=7)
    expires_at = ApiToken.objects.get(pk=created.json()["id"]).expires_at
    assert before + timedelta(days=7) <= expires_at < parent.expires_at


def test_a_parent_that_never_expires_may_mint_a_child_that_never_expires(cast):
    _, client = issued(cast.rep_a, ["read", "approve"], days=None)
    created = mint(client, expires_in_days=None)
    assert created.status_code == 201
    assert created.json()["expires_at"] is None


@pytest.mark.parametrize("scopes", [["read", "trigger"], ["trigger"], ["read", "approve", "trigger"]])
def test_a_token_cannot_mint_wider_scopes_than_its_own(cast, scopes):
    _, client = issued(cast.rep_a, ["read", "approve"])
    refused = mint(client, scopes=scopes)
    assert refused.status_code == 403
    body = refused.json()
    assert body["code"] == "token_scope_escalation"
    assert body["message"] == MSG_SCOPE_ESCALATION.format(scopes="approve, read")
    assert body["details"] == {"requested": ["trigger"], "allowed": ["approve", "read"]}
    assert ApiToken.objects.count() == 1


def test_an_administrators_token_cannot_mint_for_another_user(cast):
    _, client = issued(cast.admin, ["read", "trigger", "approve"])
    refused = mint(client, user="rep-b")
    assert refused.status_code == 403
    assert refused.json() == {"code": "token_minting_refused", "message": MSG_MINT_OTHER_USER, "details": {}}
    assert not ApiToken.objects.filter(user=cast.rep_b).exists()


def test_a_non_administrator_cannot_mint_for_another_user(cast):
    _, client = issued(cast.rep_a, ["read", "approve"])
    assert mint(client, user="rep-b").status_code == 403
    session = APIClient()
    session.force_login(cast.rep_a)
    assert mint(session, user="rep-b").status_code == 403
    assert not ApiToken.objects.filter(user=cast.rep_b).exists()


def test_an_administrators_session_mints_for_another_user(cast):
    session = APIClient()
    session.force_login(cast.admin)
    created = mint(session, user="rep-b", scopes=["read", "approve"], expires_in_days=None)
    assert created.status_code == 201
    body = created.json()
    assert body["user"] == "rep-b" and body["parent"] is None and body["expires_at"] is None


def test_a_session_through_the_browser_needs_no_token_scope(cast):
    client = Client()
    client.force_login(cast.rep_a)
    # CSRF is not enforced by the test client here; the scope rule is what is checked.
    created = client.post(URL, {"scopes": ["read", "trigger", "approve"]}, content_type="application/json")
    assert created.status_code == 201


def test_revoking_a_token_revokes_its_children_and_grandchildren_at_once(cast):
    parent, parent_client = issued(cast.rep_a, ["read", "approve"])
    child_key = mint(parent_client, scopes=["read", "approve"]).json()["key"]
    grandchild_key = mint(client_for(child_key), scopes=["read"]).json()["key"]
    unrelated, unrelated_client = issued(cast.rep_a, ["read"])
    for key in (child_key, grandchild_key):
        assert client_for(key).get("/api/v1/agreements/").status_code == 200

    revoked = parent_client.post(f"/api/v1/tokens/{parent.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["is_valid"] is False

    for key in (child_key, grandchild_key):
        response = client_for(key).get("/api/v1/agreements/")
        assert response.status_code == 401
        assert response.json()["code"] == "authentication_failed"
    assert unrelated_client.get("/api/v1/agreements/").status_code == 200
    assert ApiToken.objects.filter(revoked_at__isnull=True).get() == unrelated


def test_revoking_a_child_leaves_its_parent_valid(cast):
    parent, parent_client = issued(cast.rep_a, ["read", "approve"])
    child = ApiToken.objects.get(pk=mint(parent_client).json()["id"])
    token_revoke(actor=cast.rep_a, token=child)
    assert parent_client.get("/api/v1/agreements/").status_code == 200


def test_a_revoked_token_cannot_mint_through_the_service(cast):
    parent, _ = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read", "approve"])
    stale = ApiToken.objects.get(pk=parent.pk)
    token_revoke(actor=cast.rep_a, token=parent)
    with pytest.raises(TokenMintingRefused) as refused:
        token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"], parent=stale)  # a copy read before the revocation
    assert str(refused.value) == MSG_PARENT_INVALID
    assert ApiToken.objects.count() == 1


def test_authentication_stays_one_query_with_a_parent(cast, django_assert_num_queries):
    _, parent_client = issued(cast.rep_a, ["read", "approve"])
    child_key = mint(parent_client).json()["key"]
    from federation.api.auth import ScopedTokenAuthentication

    request = APIClient().get("/").wsgi_request  # any request: only the header matters
    request.META["HTTP_AUTHORIZATION"] = f"Token {child_key}"
    ApiToken.objects.update(last_used_at=timezone.now())  # no last-used write this time
    with django_assert_num_queries(1):
        user, token = ScopedTokenAuthentication().authenticate(request)
    assert user == cast.rep_a and token.parent_id is not None


def test_issue_token_command_still_issues_tokens(cast, capsys):
    call_command("issue_token", "--user", "rep-a", "--scope", "read,approve", "--days", "0", "--name", "cli")
    key = capsys.readouterr().out.strip()
    token = ApiToken.objects.get(key_hash=ApiToken.hash_key(key))
    assert token.parent is None and token.expires_at is None and token.scopes == ["read", "approve"]
    assert client_for(key).get("/api/v1/agreements/").status_code == 200


def test_an_administrators_read_token_cannot_revoke_someone_elses_token(cast):
    victim, victim_client = issued(cast.rep_a, ["read"])
    _, admin_read = issued(cast.admin, ["read"])
    refused = admin_read.post(f"{URL}{victim.pk}/revoke/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_denied"
    victim.refresh_from_db()
    assert victim.revoked_at is None
    assert victim_client.get(URL).status_code == 200


def test_an_administrator_with_approve_revokes_someone_elses_token_and_a_token_revokes_itself(cast):
    victim, victim_client = issued(cast.rep_a, ["read"])
    _, admin_approve = issued(cast.admin, ["read", "approve"])
    assert admin_approve.post(f"{URL}{victim.pk}/revoke/").status_code == 200
    assert victim_client.get(URL).status_code == 401
    own, own_client = issued(cast.rep_b, ["read"])
    assert own_client.post(f"{URL}{own.pk}/revoke/").status_code == 200
    assert own_client.get(URL).status_code == 401
