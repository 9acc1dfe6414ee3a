"""The API's token cache (federation/token_cache.py): a token's row (token, user, role groups)
is read once and then served from Django's cache, and every change that could make it wrong
(revocation, a token saved or deleted, the user deactivated, saved or deleted, the user's
groups changed from either side) is refused or seen on the very next request."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from federation import token_cache
from federation.models import ADMINISTRATORS_GROUP, AUDITORS_GROUP, ApiToken
from federation.services.tokens import token_issue, token_revoke
from tests.tamper import force_update


@pytest.fixture(autouse=True)
def _cached(settings):
    """The cache on, as in production (a shared cache), and empty."""
    settings.FEDGOV_API_TOKEN_CACHE_SECONDS = 30
    cache.clear()
    yield
    cache.clear()


def token_client(user, scopes=("read",), **kwargs) -> tuple[ApiToken, APIClient]:
    token, key = token_issue(actor=user, user=user, scopes=list(scopes), **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return token, client


def token_queries(client, url: str = "/api/v1/agreements/") -> tuple[int, int]:
    """(status, how many queries read the token table)."""
    with CaptureQueriesContext(connection) as ctx:
        status = client.get(url).status_code
    table = ApiToken._meta.db_table
    return status, sum(1 for q in ctx.captured_queries if f'FROM "{table}"' in q["sql"])


def test_a_token_is_read_from_the_database_once_then_from_the_cache(cast):
    _, client = token_client(cast.rep_a)
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)
    assert token_queries(client) == (200, 0)


def test_without_the_setting_every_request_reads_the_database(cast, settings):
    settings.FEDGOV_API_TOKEN_CACHE_SECONDS = 0
    _, client = token_client(cast.rep_a)
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 1)


def test_a_revoked_token_is_refused_on_the_very_next_request(cast):
    token, client = token_client(cast.rep_a)
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)  # cached
    token_revoke(actor=cast.rep_a, token=token)
    response = client.get("/api/v1/agreements/")
    assert response.status_code == 401 and response.json()["code"] == "authentication_failed"
    assert client.get("/api/v1/agreements/").status_code == 401


def test_revoking_a_parent_refuses_its_cached_children_at_once(cast):
    parent, parent_client = token_client(cast.rep_a, scopes=["read", "approve"])
    child_key = parent_client.post("/api/v1/tokens/", {"scopes": ["read"], "name": "child"}, format="json").json()["key"]
    child_client = APIClient()
    child_client.credentials(HTTP_AUTHORIZATION=f"Token {child_key}")
    assert child_client.get("/api/v1/agreements/").status_code == 200
    assert token_queries(child_client) == (200, 0)  # cached
    token_revoke(actor=cast.rep_a, token=parent)
    assert child_client.get("/api/v1/agreements/").status_code == 401


def test_a_deactivated_users_token_is_refused_on_the_very_next_request(cast):
    _, client = token_client(cast.rep_a)
    assert client.get("/api/v1/agreements/").status_code == 200
    assert token_queries(client) == (200, 0)  # cached
    cast.rep_a.is_active = False
    cast.rep_a.save(update_fields=["is_active"])
    response = client.get("/api/v1/agreements/")
    assert response.status_code == 401
    assert response.json()["message"] == "The token's user is inactive."
    cast.rep_a.is_active = True
    cast.rep_a.save(update_fields=["is_active"])
    assert client.get("/api/v1/agreements/").status_code == 200


def test_a_deleted_users_token_is_refused_on_the_very_next_request(db):
    from tests.factories import UserFactory

    user = UserFactory(username="leaving")
    _, client = token_client(user)
    assert client.get("/api/v1/agreements/").status_code == 200
    assert token_queries(client) == (200, 0)  # cached
    user.delete()
    assert client.get("/api/v1/agreements/").status_code == 401


def test_a_deleted_token_is_refused_on_the_very_next_request(cast):
    token, client = token_client(cast.rep_a)
    assert client.get("/api/v1/agreements/").status_code == 200
    token.delete()
    assert client.get("/api/v1/agreements/").status_code == 401


def test_a_cached_token_past_its_expiry_is_refused(cast):
    token, client = token_client(cast.rep_a)
    force_update(ApiToken, token.pk, expires_at=timezone.now() + timedelta(seconds=1.5))
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)  # cached, with its expiry
    time.sleep(1.6)
    assert client.get("/api/v1/agreements/").status_code == 401


@pytest.mark.parametrize("side", ["user", "group", "clear_user", "clear_group"])
def test_leaving_the_administrators_group_takes_effect_on_the_very_next_request(cast, side):
    _, client = token_client(cast.admin)
    agreements = client.get("/api/v1/agreements/")
    assert agreements.status_code == 200 and token_queries(client) == (200, 0)  # cached
    events_before = client.get("/api/v1/events/").json()["count"]
    group = Group.objects.get(name=ADMINISTRATORS_GROUP)
    if side == "user":
        cast.admin.groups.remove(group)
    elif side == "group":
        group.user_set.remove(cast.admin)
    elif side == "clear_user":
        cast.admin.groups.clear()
    else:
        group.user_set.clear()
    # No longer an administrator (nor a member of any organisation): sees no governance events.
    assert events_before > 0
    assert client.get("/api/v1/events/").json()["count"] == 0


def test_joining_the_auditors_group_takes_effect_on_the_very_next_request(cast):
    _, client = token_client(cast.outsider)
    assert client.get("/api/v1/agreements/").status_code == 200 and token_queries(client) == (200, 0)
    assert not token_cache.find_token(ApiToken.objects.get(user=cast.outsider).key_hash).user._fedgov_groups
    Group.objects.get(name=AUDITORS_GROUP).user_set.add(cast.outsider)
    assert token_cache.find_token(ApiToken.objects.get(user=cast.outsider).key_hash).user._fedgov_groups == {AUDITORS_GROUP}


def test_renaming_a_role_group_takes_effect_on_the_very_next_request(cast):
    _, client = token_client(cast.admin)
    assert client.get("/api/v1/events/").json()["count"] > 0 and token_queries(client) == (200, 0)
    group = Group.objects.get(name=ADMINISTRATORS_GROUP)
    group.name = "former administrators"
    group.save()
    assert client.get("/api/v1/events/").json()["count"] == 0


def test_a_request_that_read_the_row_before_a_revocation_cannot_cache_it(cast):
    """The race: a request reads the (valid) row, the token is revoked, the request then fills
    the cache. The stale marker revocation left is never overwritten by a lookup."""
    token, client = token_client(cast.rep_a)
    key = token_cache._cache_key(token.key_hash)
    row_read_before = token_cache._row(token_cache._read(token.key_hash))
    token_revoke(actor=cast.rep_a, token=token)
    assert cache.get(key) == token_cache.STALE
    assert not cache.add(key, row_read_before, 30)  # what find_token does with the row it read
    assert client.get("/api/v1/agreements/").status_code == 401
    assert cache.get(key) == token_cache.STALE


def test_last_used_is_written_once_a_minute_whatever_the_cached_row_says(cast):
    token, client = token_client(cast.rep_a)
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(4):
            assert client.get("/api/v1/agreements/").status_code == 200
    writes = [q for q in ctx.captured_queries if q["sql"].startswith("UPDATE") and "last_used_at" in q["sql"]]
    assert len(writes) == 1
    token.refresh_from_db()
    assert token.last_used_at is not None
