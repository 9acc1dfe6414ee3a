"""Each form rejects bad input with a message next to the field, and changes nothing.

"Next to the field" is checked on the rendered page: the message sits in the field's own
error list (`<ul class="errorlist field-errors" data-field="...">`), inside its wrapper.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from accounting.models import LedgerEntry
from federation.models import (
    Agreement,
    AgreementParty,
    AgreementSignature,
    Dataset,
    GovernanceEvent,
    Membership,
    Organisation,
    RoundApproval,
    StandingApproval,
    TrainingPlan,
    TrainingRound,
)
from federation.services.agreements import agreement_create
from federation.services.datasets import MSG_BUDGET_ABOVE_TERMS
from federation.services.rounds import MSG_REASON_REQUIRED
from tests.factories import BOUNDS, FEATURES, terms

pytestmark = pytest.mark.django_db
User = get_user_model()


def field_errors(response, field: str) -> list[str]:
    """The messages rendered next to `field`: the error list inside the field's own wrapper
    (`<div class="field has-error" id="field-NAME">`), before the next field starts."""
    html = response.content.decode()
    wrapper = re.search(r'<div class="field has-error" id="field-(?:[\w]+-)?' + re.escape(field) + '">', html)
    if not wrapper:
        return []
    rest = html[wrapper.end() :]
    next_field = re.search(r'<div class="field[ "]', rest)
    block = rest[: next_field.start()] if next_field else rest
    errors = re.search(r'<ul class="errorlist field-errors"[^>]*data-field="' + re.escape(field) + r'">(.*?)</ul>', block, re.S)
    if not errors:
        return []
    return [unescape(m).strip() for m in re.findall(r"<li>(.*?)</li>", errors.group(1), re.S)]


def snapshot():
    return (
        Organisation.objects.count(),
        User.objects.count(),
        Membership.objects.count(),
        Agreement.objects.count(),
        AgreementSignature.objects.count(),
        AgreementParty.objects.filter(status="active").count(),
        Dataset.objects.count(),
        TrainingPlan.objects.count(),
        RoundApproval.objects.count(),
        StandingApproval.objects.count(),
        LedgerEntry.objects.count(),
        GovernanceEvent.objects.count(),
        list(Agreement.objects.order_by("pk").values_list("status", "version", "terms_hash")),
        list(Dataset.objects.order_by("pk").values_list("epsilon_budget", flat=True)),
        list(TrainingRound.objects.order_by("pk").values_list("status", flat=True)),
    )


def agreement_post(cast, **overrides) -> dict:
    data = {
        "title": "Cardiology consortium",
        "purposes": "heart failure research\nmodel evaluation",
        "valid_from": (date.today() - timedelta(days=1)).isoformat(),
        "valid_until": (date.today() + timedelta(days=365)).isoformat(),
        "parties": [cast.org_a.pk, cast.org_b.pk],
        "min_participants": "2",
        "min_noise_multiplier": "0.8",
        "max_clip_norm": "2.0",
        "max_delta": "1e-5",
        "max_epsilon_per_round": "2.0",
        "max_epsilon_budget": "10",
        "approval_rule": "every_party",
        "approval_quorum": "",
        "auditors": [cast.auditor.pk],
        "auditor_access": "ledger_and_governance",
        "exit_notice_days": "30",
        "data_retention": "Deleted at the end.",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# --- Agreements -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"valid_until": (date.today() - timedelta(days=5)).isoformat()}, "valid_until", "must end after it starts"),
        ({"max_delta": "2"}, "max_delta", "between 0 and 1"),
        ({"min_noise_multiplier": "0"}, "min_noise_multiplier", "greater than 0"),
        ({"max_epsilon_budget": "-1"}, "max_epsilon_budget", "greater than 0"),
        ({"approval_rule": "quorum", "approval_quorum": ""}, "approval_quorum", "needs the number of approvals"),
        ({"approval_rule": "quorum", "approval_quorum": "3"}, "approval_quorum", "exceeds the number of parties"),
        ({"parties": [None]}, "parties", "This field is required"),
        ({"min_participants": "5"}, "min_participants", "exceeds the number of parties"),
        ({"purposes": " \n "}, "purposes", "This field is required"),
        ({"max_clip_norm": "lots"}, "max_clip_norm", "Enter a number"),
        ({"title": ""}, "title", "This field is required"),
    ],
)
def test_agreement_form_shows_each_error_next_to_its_field_and_creates_nothing(cast, as_user, overrides, field, message):
    if overrides.get("parties") == [None]:
        overrides = {"parties": []}
    before = snapshot()
    response = as_user(cast.admin).post(reverse("web:agreement_create"), agreement_post(cast, **overrides))
    assert response.status_code == 200
    assert any(message in m for m in field_errors(response, field)), (field, response.content.decode()[:200])
    assert snapshot() == before


def test_a_single_party_agreement_is_refused_next_to_the_parties(cast, as_user):
    before = snapshot()
    response = as_user(cast.admin).post(reverse("web:agreement_create"), agreement_post(cast, parties=[cast.org_a.pk]))
    assert any("at least two parties" in m for m in field_errors(response, "parties"))
    assert snapshot() == before


def test_administrator_registers_submits_and_parties_sign_an_agreement(cast, as_user):
    admin = as_user(cast.admin)
    response = admin.post(reverse("web:agreement_create"), agreement_post(cast))
    agreement = Agreement.objects.get(title="Cardiology consortium")
    assert response.status_code == 302 and response["Location"] == reverse("web:agreement_detail", args=[agreement.pk])
    assert agreement.purposes == ["heart failure research", "model evaluation"]
    assert list(agreement.auditors.all()) == [cast.auditor]
    admin.post(reverse("web:agreement_submit", args=[agreement.pk]))
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.AWAITING_SIGNATURES
    for rep, org in ((cast.rep_a, cast.org_a), (cast.rep_b, cast.org_b)):
        client = as_user(rep)
        page = client.get(reverse("web:agreement_sign", args=[agreement.pk, org.slug])).content.decode()
        assert agreement.terms_hash in page
        assert f'value="{agreement.terms_hash}"' in page  # the form posts the hash shown
        response = client.post(
            reverse("web:agreement_sign", args=[agreement.pk, org.slug]), {"terms_hash": agreement.terms_hash, "confirm": "on"}
        )
        assert response.status_code == 302
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.ACTIVE


def test_signing_a_hash_other_than_the_current_terms_is_refused(cast, as_user):
    agreement = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Second"))
    as_user(cast.admin).post(reverse("web:agreement_submit", args=[agreement.pk]))
    before = snapshot()
    response = as_user(cast.rep_a).post(
        reverse("web:agreement_sign", args=[agreement.pk, cast.org_a.slug]), {"terms_hash": "0" * 64, "confirm": "on"}
    )
    assert response.status_code == 200
    assert "The terms changed since you read them" in response.content.decode()
    assert snapshot() == before


def test_signing_without_confirming_shows_the_error_at_the_checkbox(cast, as_user):
    agreement = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Third"))
    as_user(cast.admin).post(reverse("web:agreement_submit", args=[agreement.pk]))
    agreement.refresh_from_db()
    before = snapshot()
    response = as_user(cast.rep_a).post(
        reverse("web:agreement_sign", args=[agreement.pk, cast.org_a.slug]), {"terms_hash": agreement.terms_hash}
    )
    assert field_errors(response, "confirm") == ["This field is required."]
    assert snapshot() == before


def test_amending_with_bad_terms_keeps_the_version_and_shows_the_error(cast, as_user):
    before = snapshot()
    data = agreement_post(
        cast, title=cast.agreement.title, parties=[cast.org_a.pk, cast.org_b.pk, cast.org_c.pk], max_delta="1.5"
    )
    response = as_user(cast.admin).post(reverse("web:agreement_edit", args=[cast.agreement.pk]), data)
    assert any("between 0 and 1" in m for m in field_errors(response, "max_delta"))
    assert snapshot() == before


def test_amending_an_active_agreement_creates_a_new_version_to_sign(cast, as_user):
    data = agreement_post(
        cast, title=cast.agreement.title, parties=[cast.org_a.pk, cast.org_b.pk, cast.org_c.pk], max_epsilon_budget="12"
    )
    response = as_user(cast.admin).post(reverse("web:agreement_edit", args=[cast.agreement.pk]), data)
    assert response.status_code == 302
    cast.agreement.refresh_from_db()
    assert (cast.agreement.version, cast.agreement.status) == (2, Agreement.Status.AWAITING_SIGNATURES)


def test_editing_a_draft_updates_its_terms(cast, as_user):
    draft = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Draft"))
    response = as_user(cast.admin).post(
        reverse("web:agreement_edit", args=[draft.pk]), agreement_post(cast, title="Draft, renamed")
    )
    assert response.status_code == 302
    draft.refresh_from_db()
    assert (draft.title, draft.version, draft.status) == ("Draft, renamed", 1, Agreement.Status.DRAFT)


def test_suspend_resume_terminate(cast, as_user):
    admin = as_user(cast.admin)
    for action, status in (("suspend", "suspended"), ("resume", "active"), ("terminate", "terminated")):
        response = admin.post(reverse("web:agreement_status", args=[cast.agreement.pk, action]), {"reason": f"test {action}"})
        assert response.status_code == 302
        cast.agreement.refresh_from_db()
        assert cast.agreement.status == status


def test_a_status_change_the_lifecycle_forbids_is_refused_with_its_reason(cast, as_user):
    before = snapshot()
    response = as_user(cast.admin).post(
        reverse("web:agreement_status", args=[cast.agreement.pk, "resume"]), {"reason": ""}, follow=True
    )
    assert "cannot become active" in response.content.decode()
    assert snapshot() == before


def test_exit_notice_shows_the_effective_date_and_needs_confirmation(cast, as_user):
    client = as_user(cast.rep_a)
    url = reverse("web:agreement_exit", args=[cast.agreement.pk, cast.org_a.slug])
    page = client.get(url).content.decode()
    assert (date.today() + timedelta(days=30)).isoformat() in page
    before = snapshot()
    response = client.post(url, {})
    assert field_errors(response, "confirm") == ["This field is required."]
    assert snapshot() == before
    assert client.post(url, {"confirm": "on"}).status_code == 302
    assert AgreementParty.objects.get(agreement=cast.agreement, organisation=cast.org_a).status == AgreementParty.Status.NOTICE


# --- Organisations and people -----------------------------------------------------------------


def test_organisation_form_refuses_a_taken_slug_next_to_it(cast, as_user):
    before = snapshot()
    response = as_user(cast.admin).post(
        reverse("web:organisation_create"), {"name": "Again", "slug": "org-a", "kind": "hospital"}
    )
    assert any("already exists" in m for m in field_errors(response, "slug"))
    assert snapshot() == before
    response = as_user(cast.admin).post(
        reverse("web:organisation_create"), {"name": "Bad", "slug": "not a slug!", "kind": "hospital"}
    )
    assert field_errors(response, "slug")
    assert snapshot() == before


def test_administrator_registers_an_organisation_and_its_representative(cast, as_user):
    admin = as_user(cast.admin)
    response = admin.post(
        reverse("web:organisation_create"), {"name": "Hillside Hospital", "slug": "hillside", "kind": "hospital"}
    )
    assert response.status_code == 302
    url = reverse("web:member_create", args=["hillside"])
    response = admin.post(
        url,
        {"which": "new", "new-username": "rep-hillside", "new-password": "correct-horse-battery-9", "new-role": "representative"},
    )
    assert response.status_code == 302
    user = User.objects.get(username="rep-hillside")
    assert user.check_password("correct-horse-battery-9")
    assert Membership.objects.filter(user=user, organisation__slug="hillside", role="representative").exists()


def test_representative_form_refuses_weak_password_and_taken_username_creating_nobody(cast, as_user):
    admin = as_user(cast.admin)
    url = reverse("web:member_create", args=[cast.org_a.slug])
    before = snapshot()
    response = admin.post(url, {"which": "new", "new-username": "newbie", "new-password": "123", "new-role": "representative"})
    assert any("too short" in m for m in field_errors(response, "password"))
    response = admin.post(
        url, {"which": "new", "new-username": "rep-b", "new-password": "correct-horse-battery-9", "new-role": "representative"}
    )
    assert field_errors(response, "username") == ["A user with this username already exists."]
    # A membership the service refuses (a duplicate) leaves no account behind either.
    response = admin.post(url, {"which": "existing", "existing-user": "rep-a", "existing-role": "representative"})
    assert response.status_code == 200 and "already exists" in response.content.decode()
    assert snapshot() == before


# --- Datasets and budgets ---------------------------------------------------------------------


def dataset_post(cast, **overrides) -> dict:
    data = {
        "organisation": cast.org_a.slug,
        "agreement": cast.agreement.pk,
        "name": "Second cohort",
        "slug": "org-a-second",
        "record_count": "250",
        "feature_names": ", ".join(FEATURES),
        "label_name": "outcome",
        "label_classes": "no, yes",
        "feature_bounds": "\n".join(f"{lo}, {hi}" for lo, hi in BOUNDS),
        "epsilon_budget": "5",
        "delta": "1e-6",
        "accountant": "rdp",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"epsilon_budget": "50"}, "epsilon_budget", MSG_BUDGET_ABOVE_TERMS.format(budget=50.0, maximum=10.0)),
        ({"delta": "0.01"}, "delta", "exceeds the agreement's maximum"),
        ({"record_count": "0"}, "record_count", "positive whole number"),
        ({"label_classes": "yes"}, "label_classes", "at least two label classes"),
        ({"label_name": "age"}, "label_name", "cannot also be a feature"),
        ({"feature_bounds": "0 120\n10"}, "feature_bounds", "Line 2"),
        ({"feature_bounds": "0 120"}, "feature_bounds", "one [low, high] pair per feature"),
        ({"slug": "org-a-records"}, "slug", "already exists"),
        ({"epsilon_budget": ""}, "epsilon_budget", "This field is required"),
        ({"feature_transforms": "age log1p"}, "feature_transforms", 'Line 1: write "feature: transform"'),
        ({"feature_transforms": "age: cube"}, "feature_transforms", "unknown transform 'cube'"),
        ({"feature_transforms": "height: sqrt"}, "feature_transforms", "not a feature"),
    ],
)
def test_dataset_form_refuses_bad_input_next_to_the_field_and_opens_no_ledger(cast, as_user, overrides, field, message):
    before = snapshot()
    response = as_user(cast.admin).post(reverse("web:dataset_create"), dataset_post(cast, **overrides))
    assert response.status_code == 200
    errors = field_errors(response, field)
    assert any(message in m for m in errors), errors
    assert snapshot() == before


def test_the_dataset_form_records_declared_transforms_and_centring(cast, as_user):
    response = as_user(cast.admin).post(
        reverse("web:dataset_create"), dataset_post(cast, feature_transforms="glucose: log1p\nbmi: sqrt", centred="on")
    )
    assert response.status_code == 302
    dataset = Dataset.objects.get(slug="org-a-second")
    assert dataset.feature_transforms == {"bmi": "sqrt", "glucose": "log1p"} and dataset.centred


def test_a_representative_registers_a_dataset_of_its_own_organisation_only(cast, as_user):
    client = as_user(cast.rep_a)
    before = snapshot()
    response = client.post(reverse("web:dataset_create"), dataset_post(cast, organisation=cast.org_b.slug))
    assert field_errors(response, "organisation")
    assert snapshot() == before
    response = client.post(reverse("web:dataset_create"), dataset_post(cast))
    assert response.status_code == 302
    dataset = Dataset.objects.get(slug="org-a-second")
    assert LedgerEntry.objects.filter(dataset=dataset, kind="GRANT").count() == 1


def test_raising_a_budget_above_the_terms_or_lowering_it_is_refused(cast, as_user):
    client = as_user(cast.admin)
    url = reverse("web:dataset_raise_budget", args=[cast.dataset_a.slug])
    before = snapshot()
    response = client.post(url, {"epsilon_budget": "11"})
    assert response.status_code == 400
    assert any("exceeds the agreement's maximum of 10.0" in m for m in field_errors(response, "epsilon_budget"))
    response = client.post(url, {"epsilon_budget": "2"})
    assert any("can only be raised" in m for m in field_errors(response, "epsilon_budget"))
    assert snapshot() == before
    assert client.post(url, {"epsilon_budget": "9.5"}).status_code == 302
    cast.dataset_a.refresh_from_db()
    assert cast.dataset_a.epsilon_budget == 9.5


def test_auditor_cannot_raise_a_budget(cast, as_user):
    before = snapshot()
    response = as_user(cast.auditor).post(
        reverse("web:dataset_raise_budget", args=[cast.dataset_a.slug]), {"epsilon_budget": "9"}
    )
    assert response.status_code == 403
    assert snapshot() == before


# --- Plans ------------------------------------------------------------------------------------


def plan_post(cast, **overrides) -> dict:
    data = {
        "agreement": cast.agreement.pk,
        "name": "Second model",
        "purpose": "model evaluation",
        "datasets": [d.pk for d in cast.datasets],
        "model_kind": "logreg",
        "hidden": "",
        "rounds_total": "3",
        "noise_multiplier": "1.2",
        "clip_norm": "1.0",
        "batch_size": "32",
        "local_steps": "5",
        "learning_rate": "0.5",
        "momentum": "0",
        "server_learning_rate": "1",
        "eval_noise_multiplier": "",
        "secagg_threshold": "",
        "phase_timeout_seconds": "60",
        # Every value is on the form (as after "Propose"): empty optional values mean none,
        # not the planner's (the planner's defaults are tests/web/test_plan_definition.py's).
        "proposed": "on",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"purpose": "marketing"}, "purpose", "is not among the agreement's permitted purposes"),
        ({"noise_multiplier": "0"}, "noise_multiplier", "greater than 0"),
        ({"secagg_threshold": "7"}, "secagg_threshold", "between 2 and the number of datasets"),
        ({"model_kind": "mlp", "hidden": "64, x"}, "hidden", "whole numbers"),
        ({"model_kind": "mlp", "hidden": "0"}, "hidden", "layer widths between 1 and 4096"),
        ({"datasets": []}, "datasets", "This field is required"),
        ({"sampling_rate": "1.5"}, "sampling_rate", "must be in (0, 1]"),
        ({"sampling_rate": "a quarter"}, "sampling_rate", "Enter a number"),
    ],
)
def test_plan_form_refuses_bad_input_next_to_the_field(cast, as_user, overrides, field, message):
    before = snapshot()
    response = as_user(cast.admin).post(reverse("web:plan_create"), plan_post(cast, **overrides))
    assert response.status_code == 200
    assert any(message in m for m in field_errors(response, field)), field_errors(response, field)
    assert snapshot() == before


def test_the_plan_purpose_is_chosen_from_the_agreements_purposes(cast, as_user):
    page = as_user(cast.admin).get(reverse("web:plan_create")).content.decode()
    select = re.search(r'<select name="purpose"[^>]*>(.*?)</select>', page, re.S)
    assert select, "the purpose is a list to choose from, not free text"
    options = re.findall(r'<option value="([^"]*)"', select.group(1))
    assert set(cast.agreement.purposes) <= set(options)
    assert f'<optgroup label="{cast.agreement.title}">' in unescape(select.group(1))


def test_administrator_defines_a_plan(cast, as_user):
    response = as_user(cast.admin).post(reverse("web:plan_create"), plan_post(cast, model_kind="mlp", hidden="16, 8"))
    assert response.status_code == 302
    plan = TrainingPlan.objects.get(name="Second model")
    assert plan.model_spec["hidden"] == [16, 8]


# --- Rounds -----------------------------------------------------------------------------------


def test_rejecting_without_a_reason_shows_the_services_message_next_to_the_reason(cast, waiting_round, as_user):
    before = snapshot()
    response = as_user(cast.rep_a).post(reverse("web:round_reject", args=[waiting_round.pk, cast.org_a.slug]), {"reason": "  "})
    assert response.status_code == 400
    assert field_errors(response, "reason") == [MSG_REASON_REQUIRED]
    assert snapshot() == before


def test_representative_approves_and_another_rejects_a_round(cast, waiting_round, as_user):
    response = as_user(cast.rep_a).post(reverse("web:round_approval", args=[waiting_round.pk, cast.org_a.slug]))
    assert response.status_code == 302
    assert RoundApproval.objects.get(round=waiting_round, organisation=cast.org_a).decision == "approve"
    page = as_user(cast.rep_a).get(response["Location"]).content.decode()
    assert "Org A approved this round" in page and 'id="approve-form"' not in page
    response = as_user(cast.rep_b).post(
        reverse("web:round_reject", args=[waiting_round.pk, cast.org_b.slug]), {"reason": "Budget needed elsewhere."}
    )
    assert response.status_code == 302
    waiting_round.refresh_from_db()
    assert waiting_round.status == TrainingRound.Status.REJECTED
    assert "Budget needed elsewhere." in waiting_round.reason


def test_a_representative_of_another_organisation_cannot_decide_for_the_first(cast, waiting_round, stranger_rep, as_user):
    before = snapshot()
    url = reverse("web:round_approval", args=[waiting_round.pk, cast.org_a.slug])
    assert as_user(cast.rep_b).get(url).status_code == 403
    assert as_user(cast.rep_b).post(url).status_code == 403
    assert as_user(stranger_rep).get(url).status_code == 404
    assert (
        as_user(stranger_rep)
        .post(reverse("web:round_reject", args=[waiting_round.pk, cast.org_a.slug]), {"reason": "x"})
        .status_code
        == 404
    )
    assert as_user(cast.auditor).post(url).status_code == 403
    assert snapshot() == before


def test_standing_approval_needs_a_bound(cast, as_user):
    client = as_user(cast.rep_a)
    url = reverse("web:standing_approval", args=[cast.plan.pk, cast.org_a.slug])
    before = snapshot()
    response = client.post(url, {"max_rounds": "", "max_epsilon": ""})
    assert any("Bound the standing approval" in m for m in field_errors(response, "max_rounds"))
    response = client.post(url, {"max_rounds": "", "max_epsilon": "-1"})
    assert any("greater than 0" in m for m in field_errors(response, "max_epsilon"))
    assert snapshot() == before
    assert client.post(url, {"max_rounds": "2"}).status_code == 302
    assert StandingApproval.objects.filter(plan=cast.plan, organisation=cast.org_a, max_rounds=2).exists()


def test_requesting_a_round_from_the_plan_page(cast, as_user):
    response = as_user(cast.admin).post(reverse("web:round_request", args=[cast.plan.pk]))
    round = TrainingRound.objects.get(plan=cast.plan)
    assert response["Location"] == reverse("web:round_detail", args=[round.pk])
    # A second request while the first is live is refused with the service's reason.
    response = as_user(cast.admin).post(reverse("web:round_request", args=[cast.plan.pk]), follow=True)
    assert "one round of a plan runs at a time" in response.content.decode()
    assert TrainingRound.objects.filter(plan=cast.plan).count() == 1
