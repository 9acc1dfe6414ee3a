"""The reads by entity (`federation.selectors.<entity>`): keyword-only arguments, and the
access rules of `federation.access` applied by every one of them (an outsider gets NotFound
for one object and nothing in a list)."""

from __future__ import annotations

import pytest

from federation.selectors import agreements, datasets, events, ledger, model_versions, organisations, plans, rounds, tokens
from federation.services.rounds import round_approve, round_request
from federation.services.tokens import token_issue
from fedgov.errors import NotFound, PermissionDenied


@pytest.fixture
def waiting(cast):
    return round_request(actor=cast.admin, plan=cast.plan)


def _one_object_lookups(cast, round):
    return [
        (agreements.agreement_for, {"pk": cast.agreement.pk}),
        (datasets.dataset_for, {"slug": cast.dataset_a.slug}),
        (ledger.ledger_dataset_for, {"slug": cast.dataset_a.slug}),
        (ledger.ledger_dataset_by_pk, {"pk": cast.dataset_a.pk}),
        (plans.plan_for, {"pk": cast.plan.pk}),
        (rounds.round_for, {"pk": round.pk}),
        (organisations.organisation_for, {"slug": cast.org_a.slug}),
    ]


def _lists(cast):
    return [
        agreements.agreements_for,
        agreements.agreement_list_for,
        datasets.datasets_for,
        datasets.dataset_list_for,
        plans.plans_for,
        plans.plan_list_for,
        rounds.rounds_for,
        rounds.round_list_for,
        model_versions.model_versions_for,
        events.events_for,
        events.event_feed_for,
        organisations.organisations_for,
        organisations.memberships_for,
        tokens.tokens_for,
    ]


@pytest.mark.django_db
def test_every_selector_takes_keyword_arguments_only(cast, waiting):
    for selector, kwargs in _one_object_lookups(cast, waiting):
        with pytest.raises(TypeError):
            selector(cast.admin, *kwargs.values())
        assert selector(user=cast.admin, **kwargs) is not None
    for selector in _lists(cast):
        with pytest.raises(TypeError):
            selector(cast.admin)
    with pytest.raises(TypeError):
        rounds.round_costs(waiting)


@pytest.mark.django_db
def test_an_outsider_gets_not_found_for_every_object_and_nothing_in_any_list(cast, waiting):
    token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"], name="a's", expires_in_days=1)
    for selector, kwargs in _one_object_lookups(cast, waiting):
        with pytest.raises(NotFound):
            selector(user=cast.outsider, **kwargs)
    for selector in _lists(cast):
        assert list(selector(user=cast.outsider)) == [], selector.__name__
    # The same lists are not empty for whoever may see the rows (the cast has no model yet).
    for selector in _lists(cast):
        if selector is not model_versions.model_versions_for:
            assert list(selector(user=cast.admin)), selector.__name__


@pytest.mark.django_db
def test_a_representative_of_another_party_sees_the_dataset_but_not_its_ledger(cast):
    assert datasets.dataset_for(user=cast.rep_b, slug=cast.dataset_a.slug) == cast.dataset_a
    with pytest.raises(PermissionDenied):
        ledger.ledger_dataset_for(user=cast.rep_b, slug=cast.dataset_a.slug)
    with pytest.raises(PermissionDenied):
        ledger.ledger_dataset_by_pk(user=cast.rep_b, pk=cast.dataset_a.pk)
    assert ledger.ledger_dataset_for(user=cast.auditor, slug=cast.dataset_a.slug) == cast.dataset_a


@pytest.mark.django_db
def test_the_approval_target_is_404_for_an_outsider_and_403_for_another_partys_representative(cast, waiting):
    with pytest.raises(NotFound):
        rounds.approval_target(user=cast.outsider, pk=waiting.pk, org_slug=cast.org_a.slug)
    with pytest.raises(PermissionDenied):
        rounds.approval_target(user=cast.rep_b, pk=waiting.pk, org_slug=cast.org_a.slug)
    assert rounds.approval_target(user=cast.rep_a, pk=waiting.pk, org_slug=cast.org_a.slug) == (waiting, cast.org_a)
    with pytest.raises(PermissionDenied):
        rounds.deciders_for(user=cast.auditor, round=waiting)


@pytest.mark.django_db
def test_undecided_organisations_is_one_query_and_drops_an_organisation_once_it_decided(
    cast, waiting, django_assert_max_num_queries
):
    with django_assert_max_num_queries(1):
        assert rounds.undecided_organisations(user=cast.rep_a, round=waiting) == [cast.org_a]
    assert rounds.undecided_organisations(user=cast.outsider, round=waiting) == []
    round_approve(actor=cast.rep_a, round=waiting, organisation=cast.org_a)
    assert rounds.undecided_organisations(user=cast.rep_a, round=waiting) == []
    assert rounds.undecided_organisations(user=cast.rep_b, round=waiting) == [cast.org_b]


@pytest.mark.django_db
def test_round_costs_are_the_accountants_composed_figures(cast, waiting):
    rows = rounds.round_costs(round=waiting)
    assert [r["dataset"] for r in rows] == sorted(cast.datasets, key=lambda d: d.pk)
    for row in rows:
        assert row["cost"] > 0 and row["fits"] and not row["reserved"]
        assert row["after"] == pytest.approx(row["spent"] + row["cost"])
        assert row["left_after"] == pytest.approx(row["budget"] - row["after"])
