"""The Django admin reads (ARCHITECTURE.md, Trust 4): a superuser's POSTs to change or add
governance records are refused and change nothing (issue #13)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from accounting.models import DatasetBudget, LedgerEntry
from federation.models import (
    Agreement,
    ApiToken,
    Dataset,
    RoundApproval,
    TrainingPlan,
    TrainingRound,
)
from federation.services.rounds import round_request
from federation.services.tokens import token_issue
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(db):
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.org", "pw-not-used"))
    return client


def change_url(obj):
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def add_url(model):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")


def test_every_governance_and_ledger_model_is_read_only_for_a_superuser(cast, superuser_client):
    request = superuser_client.get("/admin/").wsgi_request
    registered = {m for m in admin.site._registry if m._meta.app_label in ("federation", "accounting")}
    expected = {m for m in __import__("django.apps").apps.apps.get_models() if m._meta.app_label in ("federation", "accounting")}
    # Through-models of many-to-many fields are shown as inlines or not at all.
    assert {m._meta.model_name for m in expected - registered} <= {"trainingplan_datasets", "agreement_auditors"}
    for model in registered:
        model_admin = admin.site._registry[model]
        assert model_admin.has_view_permission(request)
        assert not model_admin.has_add_permission(request), model
        assert not model_admin.has_change_permission(request), model
        assert not model_admin.has_delete_permission(request), model
        assert "delete_selected" not in model_admin.get_actions(request), model
        assert superuser_client.get(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")).status_code == 200
        assert superuser_client.post(add_url(model), {}).status_code == 403


def test_admin_cannot_change_an_active_agreements_signed_terms(cast, superuser_client):
    agreement = cast.agreement
    assert superuser_client.get(change_url(agreement)).status_code == 200  # viewing is fine
    response = superuser_client.post(change_url(agreement), {"min_noise_multiplier": "0.01", "max_delta": "0.5", "title": "x"})
    assert response.status_code == 403
    fresh = Agreement.objects.get(pk=agreement.pk)
    assert (fresh.min_noise_multiplier, fresh.max_delta, fresh.terms_hash) == (
        agreement.min_noise_multiplier, agreement.max_delta, agreement.terms_hash
    )


def test_admin_cannot_change_a_live_plans_parameters(cast, superuser_client):
    round_request(actor=cast.admin, plan=cast.plan)
    response = superuser_client.post(change_url(cast.plan), {"noise_multiplier": "0.8", "local_steps": "3000"})
    assert response.status_code == 403
    plan = TrainingPlan.objects.get(pk=cast.plan.pk)
    assert (plan.noise_multiplier, plan.local_steps) == (1.1, 5)


def test_admin_cannot_change_a_budgeted_datasets_delta(cast, superuser_client):
    response = superuser_client.post(change_url(cast.dataset_a), {"delta": "0.4"})
    assert response.status_code == 403
    assert Dataset.objects.get(pk=cast.dataset_a.pk).delta == 1e-5
    budget = DatasetBudget.objects.get(dataset=cast.dataset_a)
    assert superuser_client.post(change_url(budget), {"epsilon_spent": "0"}).status_code == 403
    entry = LedgerEntry.objects.filter(dataset=cast.dataset_a).first()
    assert superuser_client.post(change_url(entry), {"delta": "0.4"}).status_code == 403


def test_admin_cannot_add_approvals_or_move_a_round_back(cast, superuser_client):
    round = round_request(actor=cast.admin, plan=cast.plan)
    stranger = OrganisationFactory(slug="stranger", name="Stranger")
    response = superuser_client.post(
        add_url(RoundApproval), {"round": round.pk, "organisation": stranger.pk, "decision": "approve", "decided_at_0": "2024-01-01", "decided_at_1": "00:00"}
    )
    assert response.status_code == 403
    assert not RoundApproval.objects.filter(round=round).exists()
    late = TrainingRound.objects.create(plan=cast.plan, number=60, status="aggregating", phase="unmask_response")
    response = superuser_client.post(change_url(late), {"status": "running", "phase": "share_keys"})
    assert response.status_code == 403
    late.refresh_from_db()
    assert (late.status, late.phase) == ("aggregating", "unmask_response")
    delete = reverse("admin:federation_traininground_delete", args=[late.pk])
    assert superuser_client.post(delete, {"post": "yes"}).status_code == 403
    assert TrainingRound.objects.filter(pk=late.pk).exists()


def test_the_token_revoke_action_goes_through_the_service(cast, superuser_client):
    token, _ = token_issue(actor=cast.admin, user=cast.rep_a, scopes=["read"])
    changelist = reverse("admin:federation_apitoken_changelist")
    response = superuser_client.post(changelist, {"action": "revoke_tokens", "_selected_action": [token.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert superuser_client.post(change_url(token), {"revoked_at_0": "", "revoked_at_1": ""}).status_code == 403
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_the_user_admin_protects_an_auditor_of_a_signed_agreement_from_deletion(cast, superuser_client):
    """Deleting them would drop a signed auditor (federation/member_guards.py): the delete
    page lists why, single or bulk, and deletes nothing; a user who audits nothing goes."""
    User = get_user_model()
    url = reverse("admin:auth_user_delete", args=[cast.auditor.pk])
    page = superuser_client.post(url, {"post": "yes"})
    assert page.status_code == 200 and "deactivate the account instead" in page.content.decode()
    changelist = reverse("admin:auth_user_changelist")
    bulk = superuser_client.post(
        changelist, {"action": "delete_selected", "_selected_action": [cast.auditor.pk, cast.outsider.pk], "post": "yes"}
    )
    assert bulk.status_code == 200 and "deactivate the account instead" in bulk.content.decode()
    assert User.objects.filter(pk__in=[cast.auditor.pk, cast.outsider.pk]).count() == 2
    gone = superuser_client.post(reverse("admin:auth_user_delete", args=[cast.outsider.pk]), {"post": "yes"})
    assert gone.status_code == 302 and not User.objects.filter(pk=cast.outsider.pk).exists()
