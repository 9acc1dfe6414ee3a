"""What each resource shows, to whom, and how lists filter, order and paginate."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounting import chain
from accounting.services.budget import budget_grant
from federation.access import MSG_LEDGER_FORBIDDEN, MSG_PARAMS_FORBIDDEN
from federation.models import Agreement, AgreementParty, Dataset, GovernanceEvent
from federation.services.agreements import MSG_HASH_MISMATCH
from federation.services.rounds import round_request
from federation.services.tokens import token_issue
from tests.api.conftest import ALL_SCOPES, World, make_model_version
from tests.factories import BOUNDS, FEATURES
from tests.tamper import force_update


def as_(user, scopes=ALL_SCOPES) -> APIClient:
    _, key = token_issue(actor=user, user=user, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


# --- agreements -----------------------------------------------------------------------------


def test_the_last_signature_activates_the_agreement(world: World):
    pending = world.pending_agreement
    first = as_(world.cast.rep_a).post(
        f"/api/v1/agreements/{pending.pk}/sign/", {"terms_hash": pending.terms_hash}, format="json"
    )
    assert first.status_code == 200
    assert first.json()["status"] == Agreement.Status.AWAITING_SIGNATURES
    assert [s["organisation_slug"] for s in first.json()["signatures"]] == ["org-a"]
    second = as_(world.cast.rep_b).post(
        f"/api/v1/agreements/{pending.pk}/sign/", {"terms_hash": pending.terms_hash}, format="json"
    )
    assert second.json()["status"] == Agreement.Status.ACTIVE


def test_signing_terms_that_changed_is_refused_with_both_hashes(world: World):
    pending = world.pending_agreement
    response = as_(world.cast.rep_a).post(f"/api/v1/agreements/{pending.pk}/sign/", {"terms_hash": "0" * 64}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_failed"
    assert response.json()["message"] == MSG_HASH_MISMATCH.format(given="0" * 64, current=pending.terms_hash)


def test_an_amendment_needs_every_signature_again(world: World):
    agreement = world.cast.agreement
    response = as_(world.cast.admin).post(
        f"/api/v1/agreements/{agreement.pk}/amend/", {"max_epsilon_per_round": 1.5}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 2 and body["status"] == Agreement.Status.AWAITING_SIGNATURES
    assert body["max_epsilon_per_round"] == 1.5
    assert body["title"] == agreement.title  # terms left out stay as they were
    assert body["signatures"] == []


def test_exit_notice_records_the_notice_period(world: World):
    response = as_(world.cast.rep_b).post(f"/api/v1/agreements/{world.cast.agreement.pk}/exit-notice/", {}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["organisation_slug"] == "org-b" and body["status"] == AgreementParty.Status.NOTICE
    assert body["exit_effective_at"] > body["notice_given_at"]
    again = as_(world.cast.rep_b).post(f"/api/v1/agreements/{world.cast.agreement.pk}/exit-notice/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"


def test_an_unassigned_auditor_sees_no_agreement_and_an_assigned_one_sees_it(world: World):
    assert as_(world.cast.other_auditor).get("/api/v1/agreements/").json()["count"] == 0
    titles = {a["title"] for a in as_(world.cast.auditor).get("/api/v1/agreements/").json()["results"]}
    assert world.cast.agreement.title in titles


def test_agreements_filter_by_status_and_party(world: World):
    client = as_(world.cast.admin)
    drafts = client.get("/api/v1/agreements/", {"status": "draft"}).json()
    assert [a["id"] for a in drafts["results"]] == [world.draft_agreement.pk]
    with_c = client.get("/api/v1/agreements/", {"party": world.cast.org_c.pk}).json()
    assert [a["id"] for a in with_c["results"]] == [world.cast.agreement.pk]
    bad = client.get("/api/v1/agreements/", {"status": "nonsense"})
    assert bad.status_code == 400 and bad.json()["code"] == "validation_failed"


# --- datasets, budgets and ledgers ----------------------------------------------------------


def test_datasets_show_their_remaining_budget(world: World):
    body = as_(world.cast.rep_b).get(f"/api/v1/datasets/{world.cast.dataset_a.pk}/").json()
    assert body["epsilon_budget"] == 8.0
    assert body["epsilon_spent"] == 0.0
    assert body["epsilon_remaining"] == 8.0


def _dataset_body(world: World, **overrides) -> dict:
    body = {
        "organisation": world.cast.org_a.pk, "agreement": world.cast.agreement.pk, "slug": "org-a-scaled", "name": "Scaled",
        "record_count": 100, "feature_names": list(FEATURES), "label_name": "outcome", "label_classes": ["no", "yes"],
        "feature_bounds": [list(b) for b in BOUNDS], "epsilon_budget": 5.0, "delta": 1e-6,
    }
    return {**body, **overrides}


def test_a_dataset_is_registered_with_its_declared_transforms_and_centring(world: World):
    client = as_(world.cast.rep_a, ["read", "approve"])
    response = client.post("/api/v1/datasets/", _dataset_body(world, feature_transforms={"glucose": "log1p"}, centred=True), format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["feature_transforms"] == {"glucose": "log1p"} and response.json()["centred"] is True


@pytest.mark.parametrize(
    "transforms, message",
    [({"glucose": "cube"}, '"cube" is not a valid choice'), ({"height": "log1p"}, "not a feature"), (["glucose"], "Expected an object")],
)
def test_a_bad_transform_declaration_is_refused_and_registers_nothing(world: World, transforms, message):
    client = as_(world.cast.rep_a, ["read", "approve"])
    response = client.post("/api/v1/datasets/", _dataset_body(world, feature_transforms=transforms), format="json")
    assert response.status_code == 400 and response.json()["code"] == "validation_failed"
    assert message in str(response.json()["details"]["fields"]["feature_transforms"]), response.json()
    assert not Dataset.objects.filter(slug="org-a-scaled").exists()


def test_raising_a_budget_appends_a_grant_to_the_ledger(world: World):
    dataset = world.cast.dataset_a
    client = as_(world.cast.rep_a)
    response = client.post(f"/api/v1/datasets/{dataset.pk}/budget/", {"epsilon_budget": 9.5}, format="json")
    assert response.status_code == 200
    assert response.json()["epsilon_budget"] == 9.5 and response.json()["entries"] == 2
    kinds = [e["kind"] for e in client.get(f"/api/v1/datasets/{dataset.pk}/ledger/").json()["results"]]
    assert kinds == ["GRANT", "GRANT"]
    lowered = client.post(f"/api/v1/datasets/{dataset.pk}/budget/", {"epsilon_budget": 9.0}, format="json")
    assert lowered.status_code == 400 and lowered.json()["code"] == "validation_failed"


def test_the_ledger_is_readable_by_its_auditor_and_verifies(world: World):
    dataset = world.cast.dataset_a
    client = as_(world.cast.auditor, ["read"])
    entries = client.get(f"/api/v1/datasets/{dataset.pk}/ledger/").json()["results"]
    assert entries[0]["seq"] == 1 and entries[0]["prev_hash"] == chain.GENESIS_HASH
    verification = client.get(f"/api/v1/datasets/{dataset.pk}/ledger/verification/").json()
    assert verification["ok"] is True and verification["entries"] == len(entries)
    assert verification["first_bad_entry"] is None
    budget = client.get(f"/api/v1/datasets/{dataset.pk}/budget/").json()
    assert budget["head_hash"] == entries[-1]["entry_hash"]


def test_another_partys_representative_cannot_read_a_ledger(world: World):
    response = as_(world.cast.rep_b).get(f"/api/v1/datasets/{world.cast.dataset_a.pk}/ledger/")
    assert response.status_code == 403
    assert response.json()["message"] == MSG_LEDGER_FORBIDDEN.format(organisation="Org A")


def test_ledger_entries_filter_by_kind_round_and_time(world: World):
    dataset = world.cast.dataset_a
    for i in range(3):
        budget_grant(dataset=dataset, epsilon_budget=8.0 + i, actor=world.cast.admin)
    client = as_(world.cast.admin)
    url = f"/api/v1/datasets/{dataset.pk}/ledger/"
    assert client.get(url).json()["count"] == 4
    assert client.get(url, {"kind": "GRANT"}).json()["count"] == 4
    assert client.get(url, {"kind": "RESERVE"}).json()["count"] == 0
    assert client.get(url, {"round": world.round.pk}).json()["count"] == 0
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert client.get(url, {"created_after": future}).json()["count"] == 0
    assert client.get(url, {"created_before": future}).json()["count"] == 4
    newest_first = client.get(url, {"ordering": "-seq", "page_size": 2}).json()
    assert [e["seq"] for e in newest_first["results"]] == [4, 3]
    assert newest_first["next"] is not None
    assert client.get(url, {"created_after": "yesterday"}).status_code == 400


# --- governance events ----------------------------------------------------------------------


def test_governance_events_go_to_admins_party_representatives_and_auditors(world: World):
    total = GovernanceEvent.objects.count()
    assert as_(world.cast.admin).get("/api/v1/events/").json()["count"] == total
    assert as_(world.cast.rep_c).get("/api/v1/events/", {"agreement": world.cast.agreement.pk}).json()["count"] > 0
    assert as_(world.cast.auditor).get("/api/v1/events/", {"agreement": world.cast.agreement.pk}).json()["count"] > 0
    assert as_(world.cast.other_auditor).get("/api/v1/events/").json()["count"] == 0
    assert as_(world.cast.agent_a).get("/api/v1/events/").json()["count"] == 0
    assert as_(world.cast.outsider).get("/api/v1/events/").json()["count"] == 0


def test_an_auditor_with_ledger_only_access_does_not_see_the_governance_history(world: World):
    force_update(Agreement, world.cast.agreement.pk, auditor_access=Agreement.AuditorAccess.LEDGER)
    client = as_(world.cast.auditor)
    assert client.get("/api/v1/events/", {"agreement": world.cast.agreement.pk}).json()["count"] == 0
    assert client.get(f"/api/v1/datasets/{world.cast.dataset_a.pk}/ledger/").status_code == 200


def test_events_filter_by_kind_and_round(world: World):
    client = as_(world.cast.admin)
    requested = client.get("/api/v1/events/", {"kind": "round_requested"}).json()["results"]
    assert [e["round"] for e in requested] == [world.round.pk]
    assert client.get("/api/v1/events/", {"round": world.round.pk, "kind": "plan_created"}).json()["count"] == 0


# --- model versions -------------------------------------------------------------------------


def test_parties_download_the_parameters_with_their_hash(world: World):
    params = bytes(range(64))
    version = make_model_version(world.cast.plan, version=1, params=params)
    response = as_(world.cast.rep_b, ["read"]).get(f"/api/v1/model-versions/{version.pk}/params/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response.content == params
    assert response["X-Content-SHA256"] == hashlib.sha256(params).hexdigest()
    listed = as_(world.cast.auditor).get("/api/v1/model-versions/", {"plan": world.cast.plan.pk, "version": 1}).json()
    assert [(v["id"], v["size_bytes"]) for v in listed["results"]] == [(version.pk, 64)]


def test_the_parameters_are_refused_to_non_parties_with_json_errors(world: World):
    url = f"/api/v1/model-versions/{world.model_version.pk}/params/"
    response = as_(world.cast.auditor).get(url, HTTP_ACCEPT="application/octet-stream")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json()["message"] == MSG_PARAMS_FORBIDDEN.format(agreement=world.cast.agreement.title)


# --- lists in general -----------------------------------------------------------------------


def test_lists_paginate_with_a_page_size_and_refuse_a_page_that_does_not_exist(world: World):
    client = as_(world.cast.admin)
    first = client.get("/api/v1/events/", {"page_size": 5}).json()
    assert len(first["results"]) == 5 and first["count"] > 5 and first["previous"] is None
    second = client.get(first["next"]).json()
    assert {e["id"] for e in second["results"]}.isdisjoint({e["id"] for e in first["results"]})
    missing = client.get("/api/v1/events/", {"page": 999})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_rounds_order_and_filter(world: World):
    client = as_(world.cast.admin)
    later = round_request(actor=world.cast.admin, plan=world.idle_plan)
    by_number = client.get("/api/v1/rounds/", {"ordering": "requested_at"}).json()["results"]
    assert [r["id"] for r in by_number] == [world.round.pk, later.pk]
    assert [r["id"] for r in client.get("/api/v1/rounds/", {"plan": world.idle_plan.pk}).json()["results"]] == [later.pk]
    assert client.get("/api/v1/rounds/", {"status": "completed"}).json()["count"] == 0
    assert client.get("/api/v1/rounds/", {"plan": "x"}).status_code == 400


def test_a_huge_id_is_simply_not_found(world: World):
    client = as_(world.cast.admin)
    assert client.get(f"/api/v1/rounds/{2**70}/").status_code == 404
    assert client.get("/api/v1/rounds/", {"plan": 2**70}).status_code == 400
    response = client.post("/api/v1/plans/", {"agreement": 2**70}, format="json")
    assert response.status_code == 400


# --- the API's scoping agrees with federation.access ----------------------------------------


def test_the_apis_scoped_querysets_select_what_the_access_module_does(world: World):
    from django.db.models import Q

    from federation.access import (
        ledger_datasets,
        organisations_of,
        require_ledger_reader,
        visible_agreement_ids,
        visible_agreements,
        visible_datasets,
        visible_rounds,
    )
    from federation.models import Agreement, Dataset
    from federation.selectors.datasets import datasets_for
    from federation.selectors.rounds import rounds_for
    from fedgov.errors import PermissionDenied

    round_request(actor=world.cast.admin, plan=world.idle_plan)
    for role in ("admin", "rep_owner", "rep_other", "auditor", "other_auditor", "agent", "outsider"):
        user = world.user(role)
        # The rule, spelled with the ORM: a member of a party, or an auditor of the agreement.
        spec = set(
            Agreement.objects.filter(Q(parties__in=organisations_of(user)) | Q(auditors=user)).values_list("id", flat=True)
        )
        ids = visible_agreement_ids(user, cached=True)
        expected = set(visible_agreements(user).values_list("id", flat=True))
        assert (ids is None and role == "admin") or set(ids) == expected == spec, role
        assert set(rounds_for(user=user)) == set(visible_rounds(user)), role
        assert set(datasets_for(user=user)) == set(visible_datasets(user)), role
        readable = set(ledger_datasets(user))
        for dataset in Dataset.objects.select_related("organisation", "agreement"):
            try:
                require_ledger_reader(user, dataset)
                allowed = True
            except PermissionDenied:
                allowed = False
            assert allowed == (dataset in readable), (role, dataset.slug)
