"""Services refuse bad input with a clear error and change nothing."""

from datetime import date, timedelta

import pytest
from django.db import IntegrityError, transaction

from federation.models import Agreement, AgreementParty, AgreementSignature, Dataset, GovernanceEvent, TrainingPlan, TrainingRound
from federation.services.agreements import (
    agreement_amend,
    agreement_create,
    agreement_sign,
    agreement_submit,
    agreement_update_terms,
    agreements_apply_due_changes,
    party_give_exit_notice,
)
from federation.services.datasets import dataset_raise_budget, dataset_register
from federation.services.plans import plan_create
from federation.services.rounds import round_approve, round_reject, round_request, standing_approval_give
from fedgov.errors import InvalidState, PermissionDenied, ValidationFailed
from tests.factories import BOUNDS, FEATURES, OrganisationFactory, terms
from tests.tamper import force_update

pytestmark = pytest.mark.django_db


def counts():
    return (Agreement.objects.count(), AgreementSignature.objects.count(), Dataset.objects.count(), GovernanceEvent.objects.count())


def test_agreement_with_dates_reversed_is_refused(cast):
    before = counts()
    with pytest.raises(ValidationFailed) as err:
        agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(valid_from=date.today(), valid_until=date.today() - timedelta(days=1)))
    assert "valid_until" in err.value.details["fields"]
    assert counts() == before


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_epsilon_per_round", 0),
        ("max_epsilon_budget", -1),
        ("min_noise_multiplier", 0),
        ("max_clip_norm", -0.5),
        ("max_delta", 1.0),
        ("purposes", []),
    ],
)
def test_agreement_terms_out_of_range_are_refused(cast, field, value):
    before = counts()
    with pytest.raises(ValidationFailed) as err:
        agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(**{field: value}))
    assert field in err.value.details["fields"]
    assert counts() == before


def test_agreement_needs_two_parties(cast):
    before = counts()
    with pytest.raises(ValidationFailed, match="at least two parties"):
        agreement_create(actor=cast.admin, parties=[cast.org_a], **terms())
    assert counts() == before


def test_unknown_term_is_refused(cast):
    with pytest.raises(ValidationFailed, match="Unknown agreement terms: colour"):
        agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], colour="blue", **terms())


def test_database_refuses_reversed_dates_even_past_the_service(cast):
    with pytest.raises(IntegrityError), transaction.atomic():
        force_update(Agreement, cast.agreement.pk, valid_until=date(2000, 1, 1))


def test_signing_twice_is_refused(cast):
    agreement = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms()))
    agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_a, terms_hash=agreement.terms_hash)
    before = counts()
    with pytest.raises(InvalidState, match="already signed version 1"):
        agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_a, terms_hash=agreement.terms_hash)
    assert counts() == before


def test_signing_a_stale_hash_is_refused(cast):
    agreement = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms()))
    with pytest.raises(ValidationFailed, match="terms changed"):
        agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_a, terms_hash="ab" * 32)
    assert not AgreementSignature.objects.filter(agreement=agreement).exists()


def test_signing_for_a_non_party_is_refused(cast):
    outsider_org = OrganisationFactory(slug="org-z", name="Org Z")
    agreement = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms()))
    from tests.factories import member

    member(cast.rep_a, outsider_org)
    with pytest.raises(ValidationFailed, match="Org Z is not a party"):
        agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=outsider_org, terms_hash=agreement.terms_hash)


def test_a_representative_cannot_sign_for_another_organisation(cast):
    agreement = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms()))
    with pytest.raises(PermissionDenied, match="not a representative of Org B"):
        agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_b, terms_hash=agreement.terms_hash)
    assert not AgreementSignature.objects.filter(agreement=agreement).exists()


def test_signature_stores_who_when_and_the_hash_and_the_last_one_activates(cast):
    agreement = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms()))
    assert agreement.terms_hash == agreement.compute_terms_hash()
    sig = agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_a, terms_hash=agreement.terms_hash)
    assert (sig.signed_by, sig.terms_hash, sig.version) == (cast.rep_a, agreement.terms_hash, 1) and sig.signed_at
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.AWAITING_SIGNATURES
    agreement_sign(actor=cast.rep_b, agreement=agreement, organisation=cast.org_b, terms_hash=agreement.terms_hash)
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.ACTIVE
    kinds = list(GovernanceEvent.objects.filter(agreement=agreement).values_list("kind", flat=True))
    assert {"agreement_signed", "agreement_activated"} <= set(kinds)


def test_terms_are_frozen_once_signing_starts(cast):
    agreement = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms()))
    with pytest.raises(InvalidState, match="frozen"):
        agreement_update_terms(actor=cast.admin, agreement=agreement, max_clip_norm=9.0)
    agreement.refresh_from_db()
    assert agreement.max_clip_norm == 2.0


def test_an_amendment_needs_new_signatures(cast):
    old_hash = cast.agreement.terms_hash
    amended = agreement_amend(actor=cast.admin, agreement=cast.agreement, max_clip_norm=1.5)
    assert amended.version == 2 and amended.status == Agreement.Status.AWAITING_SIGNATURES
    assert amended.terms_hash != old_hash
    event = GovernanceEvent.objects.filter(kind="agreement_amended").get()
    assert "max_clip_norm" in event.message and event.details["before"]["max_clip_norm"] == 2.0
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        agreement_sign(actor=rep, agreement=amended, organisation=org, terms_hash=amended.terms_hash)
    amended.refresh_from_db()
    assert amended.status == Agreement.Status.ACTIVE
    assert AgreementSignature.objects.filter(agreement=amended).count() == 6  # v1 history stays


def test_exit_notice_then_exit_after_the_period(cast):
    party = party_give_exit_notice(actor=cast.rep_b, agreement=cast.agreement, organisation=cast.org_b)
    assert party.status == AgreementParty.Status.NOTICE
    assert (party.exit_effective_at - party.notice_given_at).days == 30
    with pytest.raises(InvalidState, match="already gave exit notice"):
        party_give_exit_notice(actor=cast.rep_b, agreement=cast.agreement, organisation=cast.org_b)
    assert agreements_apply_due_changes(now=party.exit_effective_at)["exited"] == 1
    party.refresh_from_db()
    assert party.status == AgreementParty.Status.EXITED
    assert GovernanceEvent.objects.filter(kind="party_exited", organisation=cast.org_b).exists()
    # History stays: its signature and dataset are still there.
    assert AgreementSignature.objects.filter(agreement=cast.agreement, organisation=cast.org_b).exists()
    assert Dataset.objects.filter(organisation=cast.org_b).exists()


def test_dataset_budget_above_the_terms_is_refused(cast):
    before = counts()
    with pytest.raises(ValidationFailed, match="exceeds the agreement's maximum of 10.0") as err:
        dataset_register(
            actor=cast.rep_a, organisation=cast.org_a, agreement=cast.agreement, slug="big", name="Big", record_count=10,
            feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=11, delta=1e-6,
            feature_bounds=[list(b) for b in BOUNDS],
        )
    assert "epsilon_budget" in err.value.details["fields"]
    assert counts() == before


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"epsilon_budget": 0}, "epsilon_budget"),
        ({"epsilon_budget": -2}, "epsilon_budget"),
        ({"delta": 1e-3}, "delta"),
        ({"record_count": 0}, "record_count"),
        ({"feature_names": []}, "feature_names"),
        ({"label_classes": ["only"]}, "label_classes"),
        ({"feature_bounds": [[0, 1]]}, "feature_bounds"),
        ({"feature_bounds": None}, "feature_bounds"),
        ({"feature_bounds": [[1, 0], [0, 1], [0, 1]]}, "feature_bounds"),
        ({"feature_transforms": {FEATURES[0]: "cube"}}, "feature_transforms"),
        ({"feature_transforms": {"not-a-feature": "log1p"}}, "feature_transforms"),
        ({"feature_transforms": [FEATURES[0], "log1p"]}, "feature_transforms"),
        ({"feature_transforms": {FEATURES[0]: "log1p"}, "feature_bounds": [[-1, 1], [0, 1], [0, 1]]}, "feature_transforms"),
        ({"centred": "yes"}, "centred"),
    ],
)
def test_dataset_bad_metadata_is_refused(cast, overrides, field):
    kwargs = dict(
        actor=cast.rep_a, organisation=cast.org_a, agreement=cast.agreement, slug="bad", name="Bad", record_count=10,
        feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=1.0, delta=1e-6,
        feature_bounds=[list(b) for b in BOUNDS],
    )
    kwargs.update(overrides)
    before = counts()
    with pytest.raises(ValidationFailed) as err:
        dataset_register(**kwargs)
    assert field in err.value.details["fields"]
    assert counts() == before


def test_a_dataset_declares_public_transforms_and_centring_that_partners_load_with(cast):
    dataset = dataset_register(
        actor=cast.rep_a, organisation=cast.org_a, agreement=cast.agreement, slug="scaled", name="Scaled", record_count=10,
        feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=1.0, delta=1e-6,
        feature_bounds=[list(b) for b in BOUNDS], feature_transforms={FEATURES[1]: "log1p", FEATURES[0]: "none"}, centred=True,
    )
    dataset.refresh_from_db()
    # "none" is not stored; what is stored is what the partner's loader is given.
    assert dataset.feature_transforms == {FEATURES[1]: "log1p"} and dataset.centred
    schema = dataset.schema()
    assert schema["feature_transforms"] == {FEATURES[1]: "log1p"} and schema["centred"] is True


def test_budget_can_only_be_raised(cast):
    with pytest.raises(ValidationFailed, match="only be raised"):
        dataset_raise_budget(actor=cast.rep_a, dataset=cast.dataset_a, epsilon_budget=2.0)
    dataset_raise_budget(actor=cast.rep_a, dataset=cast.dataset_a, epsilon_budget=9.0)
    cast.dataset_a.refresh_from_db()
    assert cast.dataset_a.epsilon_budget == 9.0


def test_plan_purpose_must_be_permitted(cast):
    with pytest.raises(ValidationFailed, match="not among the agreement's permitted purposes"):
        plan_create(
            actor=cast.admin, agreement=cast.agreement, name="P", purpose="advertising", datasets=cast.datasets,
            model_spec={"kind": "logreg"}, noise_multiplier=1.0, clip_norm=1.0,
        )


def test_plan_model_spec_is_checked(cast):
    with pytest.raises(ValidationFailed, match="model_spec.kind"):
        plan_create(
            actor=cast.admin, agreement=cast.agreement, name="P", purpose="model evaluation", datasets=cast.datasets,
            model_spec={"kind": "transformer"}, noise_multiplier=1.0, clip_norm=1.0,
        )


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_plan_sampling_rate_outside_the_unit_interval_is_refused(cast, rate):
    before = TrainingPlan.objects.count()
    with pytest.raises(ValidationFailed) as err:
        plan_create(
            actor=cast.admin, agreement=cast.agreement, name="P", purpose="model evaluation", datasets=cast.datasets,
            model_spec={"kind": "logreg"}, noise_multiplier=1.0, clip_norm=1.0, sampling_rate=rate,
        )
    assert "sampling_rate" in err.value.details["fields"]
    assert TrainingPlan.objects.count() == before


def test_a_plan_samples_every_dataset_at_its_rate_or_at_batch_over_records(cast):
    by_batch = plan_create(
        actor=cast.admin, agreement=cast.agreement, name="Batch", purpose="model evaluation", datasets=cast.datasets,
        model_spec={"kind": "logreg"}, noise_multiplier=1.5, clip_norm=1.0, batch_size=10, rounds_total=2,
    )
    by_rate = plan_create(
        actor=cast.admin, agreement=cast.agreement, name="Rate", purpose="model evaluation", datasets=cast.datasets,
        model_spec={"kind": "logreg"}, noise_multiplier=1.5, clip_norm=1.0, sampling_rate=0.2, rounds_total=2,
    )
    for dataset in cast.datasets:
        assert by_batch.dp_params_for(dataset)["q"] == min(1.0, 10 / dataset.record_count)
        assert by_rate.dp_params_for(dataset)["q"] == 0.2


def test_only_one_live_round_per_plan_and_idempotency_key(cast):
    first = round_request(actor=cast.admin, plan=cast.plan, idempotency_key="abc")
    again = round_request(actor=cast.admin, plan=cast.plan, idempotency_key="abc")
    assert first.pk == again.pk
    with pytest.raises(InvalidState, match="still awaiting approval"):
        round_request(actor=cast.admin, plan=cast.plan)
    assert TrainingRound.objects.count() == 1


def test_rejection_needs_a_reason_and_stops_the_round(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    with pytest.raises(ValidationFailed, match="Say why"):
        round_reject(actor=cast.rep_a, round=rnd, organisation=cast.org_a, reason="  ")
    round_reject(actor=cast.rep_a, round=rnd, organisation=cast.org_a, reason="audit pending")
    rnd.refresh_from_db()
    assert rnd.status == TrainingRound.Status.REJECTED and "audit pending" in rnd.reason
    with pytest.raises(InvalidState):
        round_approve(actor=cast.rep_b, round=rnd, organisation=cast.org_b)


def test_deciding_twice_is_refused(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    round_approve(actor=cast.rep_a, round=rnd, organisation=cast.org_a)
    with pytest.raises(InvalidState, match="already approved"):
        round_approve(actor=cast.rep_a, round=rnd, organisation=cast.org_a)


@pytest.mark.parametrize(
    "first_ends, next_status",
    [
        (TrainingRound.Status.COMPLETED, TrainingRound.Status.AWAITING_APPROVAL),
        # Blocked when it came to start (a party exited in between, say): it trained
        # nothing and spent no budget, so the approval for one round is still unused.
        (TrainingRound.Status.BLOCKED, TrainingRound.Status.APPROVED),
        (TrainingRound.Status.REJECTED, TrainingRound.Status.APPROVED),
    ],
)
def test_standing_approval_approves_rounds_up_to_its_count_of_rounds_that_ran(cast, first_ends, next_status):
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        standing_approval_give(actor=rep, plan=cast.plan, organisation=org, max_rounds=1)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    assert rnd.status == TrainingRound.Status.APPROVED
    force_update(TrainingRound, rnd.pk, status=first_ends)
    second = round_request(actor=cast.admin, plan=cast.plan)
    assert second.status == next_status
    # One use each, whichever way: the completed first round, or the approved second one.
    assert [s.rounds_used() for s in cast.plan.standing_approvals.all()] == [1, 1, 1]


def test_standing_approval_must_be_bounded(cast):
    with pytest.raises(ValidationFailed, match="Bound the standing approval"):
        standing_approval_give(actor=cast.rep_a, plan=cast.plan, organisation=cast.org_a)
