"""Authentication: tokens and their scopes, sessions with CSRF, and the throttles that keep
password and token guessing slow."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from federation.api.tokens import MSG_BAD_CREDENTIALS, MSG_SCOPE_ESCALATION
from federation.models import ApiToken, TrainingRound
from federation.services.tokens import token_issue, token_revoke


def token_client(user, scopes) -> APIClient:
    _, key = token_issue(actor=user, user=user, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


# --- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [(["read"], 200), (["trigger"], 403), (["approve"], 403), (["read", "approve"], 200)],
)
def test_reading_needs_the_read_scope(cast, scopes, expected):
    response = token_client(cast.rep_a, scopes).get("/api/v1/agreements/")
    assert response.status_code == expected
    if expected == 403:
        assert response.json() == {"code": "permission_denied", "message": "This token lacks the 'read' scope.", "details": {}}


def test_requesting_a_round_needs_the_trigger_scope(cast):
    url = f"/api/v1/plans/{cast.plan.pk}/rounds/"
    refused = token_client(cast.rep_a, ["read", "approve"]).post(url)
    assert refused.status_code == 403
    assert refused.json()["message"] == "This token lacks the 'trigger' scope."
    assert not TrainingRound.objects.exists()
    assert token_client(cast.rep_a, ["trigger"]).post(url).status_code == 201


def test_approving_and_signing_need_the_approve_scope(cast):
    round_id = token_client(cast.admin, ["trigger"]).post(f"/api/v1/plans/{cast.plan.pk}/rounds/").json()["id"]
    refused = token_client(cast.rep_a, ["read", "trigger"]).post(f"/api/v1/rounds/{round_id}/approve/", {}, format="json")
    assert refused.status_code == 403
    assert refused.json()["message"] == "This token lacks the 'approve' scope."
    sign = token_client(cast.rep_a, ["read"]).post(
        f"/api/v1/agreements/{cast.agreement.pk}/sign/", {"terms_hash": cast.agreement.terms_hash}, format="json"
    )
    assert sign.status_code == 403
    assert token_client(cast.rep_a, ["approve"]).post(f"/api/v1/rounds/{round_id}/approve/", {}, format="json").status_code == 200


def test_an_agent_scope_token_cannot_use_the_governance_api(cast):
    response = token_client(cast.agent_a, ["agent"]).get("/api/v1/rounds/")
    assert response.status_code == 403


def test_a_token_cannot_mint_a_token_with_more_scopes_than_its_own(cast):
    client = token_client(cast.rep_a, ["read"])
    refused = client.post("/api/v1/tokens/", {"scopes": ["read", "approve"]}, format="json")
    assert refused.status_code == 403
    assert refused.json()["message"] == MSG_SCOPE_ESCALATION.format(scopes="read")
    created = client.post("/api/v1/tokens/", {"scopes": ["read"], "name": "ci"}, format="json")
    assert created.status_code == 201
    assert created.json()["key"].startswith("fg_")


def test_a_revoked_or_expired_token_is_refused(cast):
    token, key = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/agreements/").status_code == 200
    token_revoke(actor=cast.rep_a, token=token)
    response = client.get("/api/v1/agreements/")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == "Token"


def test_anonymous_requests_get_401_with_the_error_body(db):
    response = APIClient().get("/api/v1/agreements/")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


# --- tokens ---------------------------------------------------------------------------------


def test_tokens_are_listed_without_their_keys_and_only_your_own(cast):
    token_issue(actor=cast.rep_b, user=cast.rep_b, scopes=["read"])
    response = token_client(cast.rep_a, ["read"]).get("/api/v1/tokens/")
    assert response.status_code == 200
    assert {t["user"] for t in response.json()["results"]} == {"rep-a"}
    assert all("key" not in t and "key_hash" not in t for t in response.json()["results"])


def test_only_an_administrator_creates_tokens_for_someone_else(cast):
    refused = token_client(cast.rep_a, ["read"]).post("/api/v1/tokens/", {"scopes": ["read"], "user": "rep-b"}, format="json")
    assert refused.status_code == 403
    created = token_client(cast.admin, ["read"]).post("/api/v1/tokens/", {"scopes": ["read"], "user": "rep-b"}, format="json")
    assert created.status_code == 201 and created.json()["user"] == "rep-b"


def test_obtaining_a_token_with_a_password(cast):
    response = APIClient().post("/api/v1/auth/token/", {"username": "rep-a", "password": "pw", "scopes": ["read"]}, format="json")
    assert response.status_code == 201
    key = response.json()["key"]
    assert ApiToken.objects.get(key_hash=ApiToken.hash_key(key)).user == cast.rep_a
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/agreements/").status_code == 200


def test_a_wrong_password_is_a_401(cast):
    response = APIClient().post(
        "/api/v1/auth/token/", {"username": "rep-a", "password": "nope", "scopes": ["read"]}, format="json"
    )
    assert response.status_code == 401
    assert response.json() == {"code": "authentication_failed", "message": MSG_BAD_CREDENTIALS, "details": {}}


# --- throttling -----------------------------------------------------------------------------


def test_password_guessing_is_throttled(cast):
    client = APIClient()
    statuses = [
        client.post(
            "/api/v1/auth/token/", {"username": "rep-a", "password": f"guess{i}", "scopes": ["read"]}, format="json"
        ).status_code
        for i in range(12)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]
    throttled = client.post("/api/v1/auth/token/", {"username": "rep-a", "password": "pw", "scopes": ["read"]}, format="json")
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "throttled"
    assert int(throttled["Retry-After"]) > 0


def test_token_guessing_is_throttled_and_valid_tokens_from_elsewhere_still_work(cast):
    guesser = APIClient(REMOTE_ADDR="203.0.113.9")
    statuses = []
    for i in range(22):
        guesser.credentials(HTTP_AUTHORIZATION=f"Token fg_guess{i}")
        statuses.append(guesser.get("/api/v1/agreements/").status_code)
    assert statuses[:20] == [401] * 20
    assert statuses[20:] == [429, 429]
    # The guesser's address is blocked even with a valid token; another address is not.
    _, key = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"])
    guesser.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert guesser.get("/api/v1/agreements/").status_code == 429
    other = APIClient(REMOTE_ADDR="198.51.100.7")
    other.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert other.get("/api/v1/agreements/").status_code == 200


def test_successful_token_requests_are_not_throttled(cast):
    client = token_client(cast.rep_a, ["read"])
    assert all(client.get("/api/v1/health/").status_code == 200 for _ in range(3))
    assert all(client.get("/api/v1/agreements/").status_code == 200 for _ in range(30))


# --- sessions -------------------------------------------------------------------------------


def test_a_session_needs_a_csrf_token_to_write(cast):
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.admin)
    assert client.get("/api/v1/agreements/").status_code == 200
    refused = client.post(f"/api/v1/plans/{cast.plan.pk}/rounds/", content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["message"]
    assert not TrainingRound.objects.exists()
    client.get("/api/v1/agreements/", HTTP_ACCEPT="text/html")  # the browsable API sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(f"/api/v1/plans/{cast.plan.pk}/rounds/", content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 201


def test_the_api_reads_json_bodies_only(cast):
    client = APIClient()
    client.force_authenticate(cast.admin)
    response = client.post("/api/v1/organisations/", {"slug": "x", "name": "X"}, format="multipart")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_json_types_are_not_coerced(cast):
    client = APIClient()
    client.force_authenticate(cast.admin)
    response = client.post("/api/v1/organisations/", {"slug": "x", "name": 5}, format="json")
    assert response.status_code == 400
    assert response.json()["details"]["fields"] == {"name": ["Expected text."]}


def test_the_browsable_api_renders_for_a_signed_in_person(cast):
    client = Client()
    client.force_login(cast.rep_a)
    response = client.get("/api/v1/rounds/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
