"""The API's cache of the agreements each user sees (federation/visibility_cache.py): read
once, then from the cache; and every change that moves a user's set (a membership, a party,
an auditor) is seen on the very next request, never served from the old set."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from federation import visibility_cache
from federation.models import AgreementParty, Membership
from federation.services.organisations import membership_add
from federation.services.tokens import token_issue
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _cached(settings):
    """The cache on, as in production (a shared cache), and empty."""
    settings.FEDGOV_API_TOKEN_CACHE_SECONDS = 30
    cache.clear()
    yield
    cache.clear()


def client_for(user) -> APIClient:
    _, key = token_issue(actor=user, user=user, scopes=["read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def visible_reads(client, url: str) -> tuple[int, int]:
    """(status, how many queries read the agreement-party table: the visible set's UNION)."""
    with CaptureQueriesContext(connection) as ctx:
        status = client.get(url).status_code
    table = AgreementParty._meta.db_table
    return status, sum(1 for q in ctx.captured_queries if f'"{table}"' in q["sql"] and "UNION" in q["sql"])


def test_the_visible_set_is_read_once_then_from_the_cache(cast):
    client = client_for(cast.rep_a)
    url = "/api/v1/rounds/"  # scoped by the set of ids (the dataset page scopes in its own query)
    cache.clear()  # the stale markers the cast's memberships left have expired
    assert visible_reads(client, url) == (200, 1)
    assert visible_reads(client, url) == (200, 0)


def test_leaving_the_organisation_hides_its_agreements_on_the_next_request(cast):
    client = client_for(cast.rep_a)
    url = f"/api/v1/datasets/{cast.datasets[0].pk}/"
    assert client.get(url).status_code == 200
    # Removed behind the service (the ORM, as a careless operator would): the signal still fires.
    Membership.objects.filter(user=cast.rep_a, organisation=cast.datasets[0].organisation).delete()
    assert client.get(url).status_code == 404


def test_joining_an_organisation_shows_its_agreements_on_the_next_request(cast):
    newcomer = UserFactory(username="newcomer")
    client = client_for(newcomer)
    url = f"/api/v1/datasets/{cast.datasets[1].pk}/"
    assert client.get(url).status_code == 404  # cached: sees nothing
    membership_add(actor=cast.admin, user=newcomer, organisation=cast.datasets[1].organisation, role=Membership.Role.REPRESENTATIVE)
    assert client.get(url).status_code == 200


def test_auditors_added_or_removed_from_either_side_are_seen_on_the_next_request(cast):
    client = client_for(cast.other_auditor)
    url = f"/api/v1/datasets/{cast.datasets[0].pk}/"
    assert client.get(url).status_code == 404
    from tests.tamper import membership_unguarded

    # On a signed agreement only an amendment changes the auditors (test_member_guards.py);
    # here the lists change in place so that each side of the relation is exercised.
    with membership_unguarded():
        cast.agreement.auditors.add(cast.other_auditor)
    assert client.get(url).status_code == 200
    with membership_unguarded():
        cast.other_auditor.audited_agreements.remove(cast.agreement)
    assert client.get(url).status_code == 404
    with membership_unguarded():
        cast.agreement.auditors.add(cast.other_auditor)
    assert client.get(url).status_code == 200
    with membership_unguarded():
        cast.agreement.auditors.clear()
    assert client.get(url).status_code == 404


def test_a_party_removed_hides_the_agreement_from_every_member(cast):
    client = client_for(cast.rep_b)
    url = f"/api/v1/datasets/{cast.datasets[0].pk}/"  # org-a's dataset, visible to org-b as a party
    assert client.get(url).status_code == 200
    from tests.tamper import membership_unguarded

    with membership_unguarded():
        AgreementParty.objects.filter(agreement=cast.agreement, organisation=cast.datasets[1].organisation).delete()
    assert client.get(url).status_code == 404


def test_a_read_made_before_a_change_never_overwrites_the_stale_marker(cast):
    """A request read the set, then the membership changed, then the request tries to cache
    what it read: the marker wins, and the next request reads the database again."""
    user = cast.rep_a
    visibility_cache.forget([user.pk])  # the change, committed
    visibility_cache.visible_ids(user.pk, lambda: [999_999])  # the old read arrives late
    seen = visibility_cache.visible_ids(user.pk, lambda: [1])
    assert seen == [1]
