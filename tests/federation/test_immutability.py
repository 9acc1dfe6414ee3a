"""No back door below the services (ARCHITECTURE.md, Trust 4): the models and the database
refuse what the admin used to allow (issue #13): signed terms edited in place, a live plan's
DP parameters changed, a budgeted dataset's delta changed, approvals for organisations that
never approved, a round moved backwards. Each attack through save(), QuerySet.update() and
raw SQL, and the service paths that must still work."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from federation import triggers
from federation.guards import ApproverNotInvolved, IllegalTransition, RecordFrozen
from federation.models import Agreement, Dataset, RoundApproval, TrainingPlan, TrainingRound
from federation.services.agreements import agreement_amend, agreement_sign
from federation.services.rounds import round_request
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db
Status = TrainingRound.Status


def sql(statement, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)


def refused_by_the_database(statement, params=()):
    with pytest.raises(DatabaseError):
        sql(statement, params)


def test_the_migration_installed_the_guards(db):
    assert triggers.GOVERNANCE.installed(connection) == triggers.GOVERNANCE.expected()


# --- signed terms -------------------------------------------------------------------------------


def test_an_active_agreements_signed_terms_cannot_be_edited(cast):
    agreement = Agreement.objects.get(pk=cast.agreement.pk)
    assert agreement.status == Agreement.Status.ACTIVE
    before = (agreement.min_noise_multiplier, agreement.max_delta, agreement.terms_hash, agreement.version)
    agreement.min_noise_multiplier, agreement.max_delta = 0.01, 0.5
    with pytest.raises(RecordFrozen) as excinfo:
        agreement.save()
    assert excinfo.value.code == "record_frozen"
    assert set(excinfo.value.details["fields"]) == {"min_noise_multiplier", "max_delta"}
    assert "min_noise_multiplier" in str(excinfo.value)
    with pytest.raises(RecordFrozen, match="max_delta"):
        Agreement.objects.filter(pk=agreement.pk).update(max_delta=0.5)
    with pytest.raises(RecordFrozen, match="terms_hash"):
        Agreement.objects.filter(pk=agreement.pk).update(terms_hash="0" * 64)
    refused_by_the_database("UPDATE federation_agreement SET min_noise_multiplier = %s, max_delta = %s WHERE id = %s", [0.01, 0.5, agreement.pk])
    # Even dressed as an amendment without going back to signature.
    refused_by_the_database("UPDATE federation_agreement SET max_delta = 0.5, version = version + 1 WHERE id = %s", [agreement.pk])
    agreement.refresh_from_db()
    assert (agreement.min_noise_multiplier, agreement.max_delta, agreement.terms_hash, agreement.version) == before
    assert agreement.status == Agreement.Status.ACTIVE


def test_an_amendment_still_changes_the_terms_and_asks_for_signatures_again(cast):
    agreement = agreement_amend(actor=cast.admin, agreement=cast.agreement, min_noise_multiplier=1.0)
    agreement.refresh_from_db()
    assert (agreement.version, agreement.status, agreement.min_noise_multiplier) == (2, Agreement.Status.AWAITING_SIGNATURES, 1.0)
    assert agreement.terms_hash == agreement.compute_terms_hash()
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        agreement_sign(actor=rep, agreement=agreement, organisation=org, terms_hash=agreement.terms_hash)
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.ACTIVE
    # Status changes that touch no term stay free for the services.
    Agreement.objects.filter(pk=agreement.pk).update(status=Agreement.Status.SUSPENDED)


def test_a_drafts_terms_stay_editable(cast):
    from federation.services.agreements import agreement_create
    from tests.factories import terms

    draft = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms())
    Agreement.objects.filter(pk=draft.pk).update(max_delta=0.5)
    sql("UPDATE federation_agreement SET min_noise_multiplier = 0.9 WHERE id = %s", [draft.pk])
    draft.refresh_from_db()
    assert (draft.max_delta, draft.min_noise_multiplier) == (0.5, 0.9)


# --- a plan with rounds ---------------------------------------------------------------------------


def test_a_plan_with_a_round_keeps_its_dp_and_model_parameters(cast):
    round_request(actor=cast.admin, plan=cast.plan)
    plan = TrainingPlan.objects.get(pk=cast.plan.pk)
    plan.noise_multiplier, plan.local_steps = 0.8, 3000
    with pytest.raises(RecordFrozen) as excinfo:
        plan.save()
    assert set(excinfo.value.details["fields"]) == {"noise_multiplier", "local_steps"}
    with pytest.raises(RecordFrozen, match="noise_multiplier"):
        TrainingPlan.objects.filter(pk=plan.pk).update(noise_multiplier=0.8)
    with pytest.raises(RecordFrozen, match="model_spec"):
        TrainingPlan.objects.filter(pk=plan.pk).update(model_spec={"kind": "mlp", "hidden": [8]})
    refused_by_the_database("UPDATE federation_trainingplan SET noise_multiplier = 0.8, local_steps = 3000 WHERE id = %s", [plan.pk])
    refused_by_the_database("UPDATE federation_trainingplan SET learning_rate = 9 WHERE id = %s", [plan.pk])
    with pytest.raises(DatabaseError), transaction.atomic():
        plan.datasets.remove(cast.datasets[0])
    refused_by_the_database("DELETE FROM federation_trainingplan_datasets WHERE trainingplan_id = %s", [plan.pk])
    plan.refresh_from_db()
    assert (plan.noise_multiplier, plan.local_steps, plan.datasets.count()) == (1.1, 5, 3)
    # What carries no privacy meaning, and the services' status changes, still go through.
    TrainingPlan.objects.filter(pk=plan.pk).update(name="Renamed", status=TrainingPlan.Status.STOPPED)


def test_a_plan_without_rounds_can_still_be_corrected(cast):
    TrainingPlan.objects.filter(pk=cast.plan.pk).update(noise_multiplier=1.3)
    sql("UPDATE federation_trainingplan SET local_steps = 7 WHERE id = %s", [cast.plan.pk])
    cast.plan.refresh_from_db()
    assert (cast.plan.noise_multiplier, cast.plan.local_steps) == (1.3, 7)


# --- a budgeted dataset ---------------------------------------------------------------------------


def test_a_budgeted_datasets_delta_accountant_and_records_are_fixed(cast):
    dataset = Dataset.objects.get(pk=cast.dataset_a.pk)
    assert dataset.ledger_entries.exists()  # registration opened the ledger with a GRANT
    dataset.delta = 0.4
    with pytest.raises(RecordFrozen) as excinfo:
        dataset.save()
    assert excinfo.value.details["fields"] == ["delta"]
    with pytest.raises(RecordFrozen, match="accountant"):
        Dataset.objects.filter(pk=dataset.pk).update(accountant="pld")
    with pytest.raises(RecordFrozen, match="record_count"):
        Dataset.objects.filter(pk=dataset.pk).update(record_count=1)
    refused_by_the_database("UPDATE federation_dataset SET delta = 0.4 WHERE id = %s", [dataset.pk])
    refused_by_the_database("UPDATE federation_dataset SET record_count = 100000 WHERE id = %s", [dataset.pk])
    dataset.refresh_from_db()
    assert (dataset.delta, dataset.accountant, dataset.record_count) == (1e-5, "rdp", 400)


# --- round approvals ------------------------------------------------------------------------------


def test_approvals_only_for_organisations_with_data_in_the_round(cast):
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == Status.AWAITING_APPROVAL
    stranger = OrganisationFactory(slug="stranger", name="Stranger")
    with pytest.raises(ApproverNotInvolved) as excinfo:
        RoundApproval.objects.create(round=round, organisation=stranger, decision="approve", decided_by=cast.admin)
    assert excinfo.value.code == "approver_not_involved"
    refused_by_the_database(
        "INSERT INTO federation_roundapproval (round_id, organisation_id, decision, reason, decided_at) VALUES (%s, %s, 'approve', '', %s)",
        [round.pk, stranger.pk, "2024-01-01 00:00:00"],
    )
    assert not RoundApproval.objects.filter(round=round).exists()


def test_a_recorded_decision_never_changes(cast):
    from federation.services.rounds import round_approve

    round = round_request(actor=cast.admin, plan=cast.plan)
    approval = round_approve(actor=cast.rep_a, round=round, organisation=cast.org_a)
    with pytest.raises(RecordFrozen):
        RoundApproval.objects.filter(pk=approval.pk).update(organisation=cast.org_b)
    refused_by_the_database("UPDATE federation_roundapproval SET organisation_id = %s WHERE id = %s", [cast.org_b.pk, approval.pk])
    refused_by_the_database("UPDATE federation_roundapproval SET decision = 'reject', reason = 'x' WHERE id = %s", [approval.pk])
    approval.refresh_from_db()
    assert (approval.organisation_id, approval.decision) == (cast.org_a.pk, "approve")


# --- the round state machine ----------------------------------------------------------------------


def _round(cast, status, phase=""):
    return TrainingRound.objects.create(plan=cast.plan, number=50, status=status, phase=phase)


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ((Status.AGGREGATING, "unmask_response"), (Status.RUNNING, "share_keys")),  # masked inputs all in: back to share_keys
        ((Status.RUNNING, "masked_input"), (Status.RUNNING, "share_keys")),
        ((Status.AGGREGATING, "aggregate"), (Status.AGGREGATING, "unmask_response")),
        ((Status.COMPLETED, ""), (Status.RUNNING, "advertise_keys")),
        ((Status.ABORTED, "share_keys"), (Status.RUNNING, "share_keys")),
        ((Status.AWAITING_APPROVAL, ""), (Status.RUNNING, "")),  # skips approval and reservation
        ((Status.RUNNING, "share_keys"), (Status.COMPLETED, "")),  # skips aggregation
        ((Status.RUNNING, "advertise_keys"), (Status.RUNNING, "made_up")),
    ],
)
def test_a_round_never_moves_outside_its_state_machine(cast, start, target):
    round = _round(cast, *start)
    round.status, round.phase = target
    with pytest.raises(IllegalTransition) as excinfo:
        round.save()
    assert excinfo.value.code == "illegal_transition"
    with pytest.raises(IllegalTransition):
        TrainingRound.objects.filter(pk=round.pk).update(status=target[0], phase=target[1])
    refused_by_the_database("UPDATE federation_traininground SET status = %s, phase = %s WHERE id = %s", [*target, round.pk])
    round.refresh_from_db()
    assert (round.status, round.phase) == start


def test_a_round_keeps_its_plan_and_number(cast):
    round = _round(cast, Status.REQUESTED)
    with pytest.raises(RecordFrozen):
        TrainingRound.objects.filter(pk=round.pk).update(number=7)
    refused_by_the_database("UPDATE federation_traininground SET number = 7 WHERE id = %s", [round.pk])


@pytest.mark.parametrize(
    "path",
    [
        [(Status.REQUESTED, ""), (Status.AWAITING_APPROVAL, ""), (Status.APPROVED, ""), (Status.RUNNING, ""),
         (Status.RUNNING, "advertise_keys"), (Status.RUNNING, "share_keys"), (Status.RUNNING, "masked_input"),
         (Status.AGGREGATING, "unmask_response"), (Status.AGGREGATING, "aggregate"), (Status.AGGREGATING, "evaluate"),
         (Status.COMPLETED, "")],
        [(Status.REQUESTED, ""), (Status.BLOCKED, "")],
        [(Status.AWAITING_APPROVAL, ""), (Status.REJECTED, "")],
        [(Status.APPROVED, ""), (Status.BLOCKED, "")],
        [(Status.RUNNING, "share_keys"), (Status.ABORTED, "share_keys")],
        [(Status.AGGREGATING, "aggregate"), (Status.COMPLETED, "")],
        [(Status.AGGREGATING, "aggregate"), (Status.FAILED, "aggregate")],
    ],
)
def test_every_move_the_services_make_is_allowed(cast, path):
    round = _round(cast, *path[0])
    for i, (status, phase) in enumerate(path[1:]):
        if i % 2:
            round.status, round.phase = status, phase
            round.save()
        else:
            TrainingRound.objects.filter(pk=round.pk).update(status=status, phase=phase)
            sql("UPDATE federation_traininground SET status = %s, phase = %s WHERE id = %s", [status, phase, round.pk])
    round.refresh_from_db()
    assert (round.status, round.phase) == path[-1]
