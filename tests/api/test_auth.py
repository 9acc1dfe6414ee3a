"""Authentication: tokens and their scopes, sessions with CSRF, and the throttles that keep
password and token guessing slow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.test import Client
from rest_framework.test import APIClient

from federation.api.tokens import MSG_BAD_CREDENTIALS
from federation.models import ApiToken, TrainingRound
from federation.services.tokens import token_issue, token_revoke
from fedgov.throttles import locked_out_message


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


def obtain(client, password: str, username: str = "rep-a", **extra):
    body = {"username": username, "password": password, "scopes": ["read"]}
    return client.post("/api/v1/auth/token/", body, format="json", **extra)


def test_rotating_x_forwarded_for_does_not_escape_the_token_throttle(cast):
    # No trusted proxy (NUM_PROXIES=0): the header is the client's own words, and ignored.
    guesser = APIClient(REMOTE_ADDR="203.0.113.9")
    statuses = []
    for i in range(22):
        guesser.credentials(HTTP_AUTHORIZATION=f"Token fg_guess{i}")
        statuses.append(guesser.get("/api/v1/agreements/", HTTP_X_FORWARDED_FOR=f"10.0.{i}.1").status_code)
    assert statuses[:20] == [401] * 20
    assert statuses[20:] == [429, 429]


def test_rotating_x_forwarded_for_does_not_escape_the_password_throttle(cast):
    client = APIClient(REMOTE_ADDR="203.0.113.9")
    statuses = [obtain(client, f"guess{i}", HTTP_X_FORWARDED_FOR=f"10.0.{i}.1").status_code for i in range(12)]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]
    assert obtain(client, "pw", HTTP_X_FORWARDED_FOR="10.9.9.9").status_code == 429


def test_behind_one_proxy_the_address_the_proxy_appended_is_the_client(cast, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = APIClient(REMOTE_ADDR="10.0.0.2")  # every request arrives from the proxy
    statuses = []
    for i in range(22):
        proxy.credentials(HTTP_AUTHORIZATION=f"Token fg_guess{i}")
        # The guesser writes anything to the left; the proxy appends the address it saw.
        xff = f"198.18.{i}.1, 203.0.113.9"
        statuses.append(proxy.get("/api/v1/agreements/", HTTP_X_FORWARDED_FOR=xff).status_code)
    assert statuses[20:] == [429, 429]
    # Another client behind the same proxy is not blocked.
    _, key = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"])
    proxy.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert proxy.get("/api/v1/agreements/", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429
    assert proxy.get("/api/v1/agreements/", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7").status_code == 200


def test_a_distributed_password_guess_at_one_username_is_locked_out(cast):
    # Each guess from its own address: no per-client limit is reached, the username's is.
    statuses = [obtain(APIClient(REMOTE_ADDR=f"198.51.100.{i}"), f"guess{i}").status_code for i in range(10)]
    assert statuses == [401] * 10
    refused = obtain(APIClient(REMOTE_ADDR="192.0.2.77"), "pw")
    assert refused.status_code == 429
    assert refused.json()["code"] == "throttled"
    assert refused.json()["message"].startswith(locked_out_message(15 * 60))
    assert 14 * 60 < int(refused["Retry-After"]) <= 15 * 60
    # Other usernames from fresh addresses are untouched.
    assert obtain(APIClient(REMOTE_ADDR="192.0.2.78"), "pw", username="rep-b").status_code == 201


def test_wrong_passwords_on_the_api_count_towards_the_web_login_lockout(cast):
    for i in range(10):
        obtain(APIClient(REMOTE_ADDR=f"198.51.100.{i}"), f"guess{i}")
    response = Client(REMOTE_ADDR="192.0.2.77").post("/accounts/login/", {"username": "rep-a", "password": "pw"})
    assert response.status_code == 429
    assert locked_out_message(15 * 60) in response.content.decode()


@pytest.mark.parametrize(
    ("env", "expected"), [({}, "0"), ({"NUM_PROXIES": "2"}, "2"), ({"NUM_PROXIES": "-1"}, "error"), ({"NUM_PROXIES": "x"}, "error")]
)
def test_num_proxies_comes_from_the_environment(env, expected):
    code = "from django.conf import settings; print(settings.NUM_PROXIES, settings.REST_FRAMEWORK['NUM_PROXIES'])"
    environ = {k: v for k, v in os.environ.items() if k != "NUM_PROXIES"} | {"DJANGO_SETTINGS_MODULE": "fedgov.settings_test", **env}
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)
    if expected == "error":
        assert result.returncode != 0 and "NUM_PROXIES must be" in result.stderr
    else:
        assert result.stdout.split() == [expected, expected], result.stderr


def test_production_counts_failures_in_redis():
    code = "from django.conf import settings; c = settings.CACHES['default']; print(c['BACKEND'], c['LOCATION'])"
    environ = dict(os.environ) | {
        "DJANGO_SETTINGS_MODULE": "fedgov.settings",
        "FEDGOV_ENV": "production",
        "SECRET_KEY": "x" * 50,
        "ALLOWED_HOSTS": "fedgov.example",
        "REDIS_URL": "redis://redis.internal:6379/0",
    }
    environ.pop("CACHE_URL", None)
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["django.core.cache.backends.redis.RedisCache", "redis://redis.internal:6379/0"], result.stderr


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
