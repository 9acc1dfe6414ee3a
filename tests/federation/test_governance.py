"""Every governance check, pass and fail. Each failing case breaks exactly one rule."""

from datetime import date, timedelta

import pytest
from django.utils import timezone

from federation import governance
from federation.models import Agreement, AgreementParty, RoundApproval, TrainingPlan, TrainingRound
from federation.services.agreements import agreement_amend, party_give_exit_notice
from federation.services.rounds import plan_resume, round_approve, round_reject, round_request
from tests.tamper import force_update

pytestmark = pytest.mark.django_db


def report_for(cast, **stage):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    return rnd, governance.governance_report(rnd, **stage)


def test_all_checks_pass_for_a_round_inside_the_terms(cast):
    rnd, report = report_for(cast)
    assert report.passed, report.summary()
    assert rnd.status == TrainingRound.Status.AWAITING_APPROVAL
    assert {c.name for c in report.checks} == {
        governance.AGREEMENT_ACTIVE, governance.AGREEMENT_SIGNED, governance.AGREEMENT_DATES,
        governance.PURPOSE_PERMITTED, governance.NO_EXITED_PARTICIPANT, governance.MIN_PARTICIPANTS, governance.ONE_DATASET_PER_ORGANISATION,
        governance.DP_PARAMETERS, governance.FEATURE_SCHEMA, governance.BUDGET,
    }


def test_round_is_blocked_when_the_agreement_is_suspended(cast):
    Agreement.objects.filter(pk=cast.agreement.pk).update(status=Agreement.Status.SUSPENDED)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    assert rnd.status == TrainingRound.Status.BLOCKED
    check = governance.governance_report(rnd).check(governance.AGREEMENT_ACTIVE)
    assert not check.passed and "suspended" in check.reason
    assert "agreement_active" in rnd.reason


def test_round_is_blocked_when_an_amendment_awaits_signatures(cast):
    agreement_amend(actor=cast.admin, agreement=cast.agreement, max_clip_norm=3.0)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    report = governance.governance_report(rnd)
    assert rnd.status == TrainingRound.Status.BLOCKED
    signed = report.check(governance.AGREEMENT_SIGNED)
    assert not signed.passed and "Org A" in signed.reason and "version 2" in signed.reason


def test_agreement_signed_check_fails_when_a_signature_covers_other_terms(cast):
    force_update(Agreement, cast.agreement.pk, terms_hash="0" * 64)
    cast.agreement.refresh_from_db()
    check = governance.check_agreement_signed(cast.agreement)
    assert not check.passed


def test_round_is_blocked_outside_the_agreement_dates(cast):
    force_update(
        Agreement, cast.agreement.pk, valid_from=date.today() - timedelta(days=30), valid_until=date.today() - timedelta(days=1)
    )
    rnd, report = report_for(cast)
    check = report.check(governance.AGREEMENT_DATES)
    assert not check.passed and "ended" in check.reason
    assert rnd.status == TrainingRound.Status.BLOCKED


def test_dates_check_fails_before_the_start(cast):
    cast.agreement.valid_from = date.today() + timedelta(days=3)
    cast.agreement.valid_until = date.today() + timedelta(days=30)
    check = governance.check_agreement_dates(cast.agreement)
    assert not check.passed and "starts" in check.reason


def test_round_is_blocked_when_the_purpose_is_not_permitted(cast):
    type(cast.plan).objects.filter(pk=cast.plan.pk).update(purpose="marketing")
    cast.plan.refresh_from_db()
    rnd, report = report_for(cast)
    check = report.check(governance.PURPOSE_PERMITTED)
    assert not check.passed and "marketing" in check.reason
    assert rnd.status == TrainingRound.Status.BLOCKED


def test_round_is_blocked_when_a_participant_gives_notice_after_the_request(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    party_give_exit_notice(actor=cast.rep_b, agreement=cast.agreement, organisation=cast.org_b)
    check = governance.check_no_exited_participant(rnd)
    assert not check.passed and "Org B" in check.reason and "notice" in check.reason


def test_exited_check_fails_after_the_notice_period_even_before_the_sweep(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    party_give_exit_notice(actor=cast.rep_b, agreement=cast.agreement, organisation=cast.org_b)
    later = timezone.now() + timedelta(days=31)
    check = governance.check_no_exited_participant(rnd, now=later)
    assert not check.passed and "Org B has exited" in check.reason


def test_a_noticed_party_is_left_out_of_later_rounds(cast):
    party_give_exit_notice(actor=cast.rep_b, agreement=cast.agreement, organisation=cast.org_b)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    assert cast.org_b.pk not in set(rnd.participating_datasets().values_list("organisation_id", flat=True))
    assert rnd.status == TrainingRound.Status.AWAITING_APPROVAL


def test_round_is_blocked_below_the_minimum_participants(cast):
    force_update(Agreement, cast.agreement.pk, min_participants=3)
    party_give_exit_notice(actor=cast.rep_c, agreement=cast.agreement, organisation=cast.org_c)
    rnd, report = report_for(cast)
    check = report.check(governance.MIN_PARTICIPANTS)
    assert not check.passed and "2 participants" in check.reason and "at least 3" in check.reason
    assert rnd.status == TrainingRound.Status.BLOCKED


def test_min_participants_respects_the_secure_aggregation_threshold(cast):
    type(cast.plan).objects.filter(pk=cast.plan.pk).update(secagg_threshold=3)
    party_give_exit_notice(actor=cast.rep_c, agreement=cast.agreement, organisation=cast.org_c)
    cast.plan.refresh_from_db()
    rnd, report = report_for(cast)
    check = report.check(governance.MIN_PARTICIPANTS)
    assert not check.passed and "threshold" in check.reason


def test_dp_check_fails_when_noise_is_below_the_floor(cast):
    type(cast.plan).objects.filter(pk=cast.plan.pk).update(noise_multiplier=0.5)
    cast.plan.refresh_from_db()
    rnd, report = report_for(cast)
    check = report.check(governance.DP_PARAMETERS)
    assert not check.passed and "below the floor 0.8" in check.reason


def test_dp_check_fails_when_clip_norm_exceeds_the_ceiling(cast):
    type(cast.plan).objects.filter(pk=cast.plan.pk).update(clip_norm=5.0)
    cast.plan.refresh_from_db()
    _, report = report_for(cast)
    check = report.check(governance.DP_PARAMETERS)
    assert not check.passed and "clip norm 5.0 exceeds the ceiling 2.0" in check.reason


def test_dp_check_fails_when_one_round_costs_more_than_the_per_round_ceiling(cast):
    force_update(Agreement, cast.agreement.pk, max_epsilon_per_round=0.05)
    _, report = report_for(cast)
    check = report.check(governance.DP_PARAMETERS)
    assert not check.passed and "per-round ceiling 0.05" in check.reason
    assert set(check.details["epsilon_per_round"]) == {d.slug for d in cast.datasets}


def test_dp_check_fails_when_a_dataset_delta_exceeds_the_terms(cast):
    force_update(Agreement, cast.agreement.pk, max_delta=1e-6)
    _, report = report_for(cast)
    check = report.check(governance.DP_PARAMETERS)
    assert not check.passed and "delta 1e-05 exceeds 1e-06" in check.reason


def test_schema_check_fails_when_a_dataset_lacks_a_feature(cast):
    type(cast.dataset_a).objects.filter(pk=cast.dataset_a.pk).update(feature_names=["age", "bmi", "insulin"])
    _, report = report_for(cast)
    check = report.check(governance.FEATURE_SCHEMA)
    assert not check.passed and "org-a-records lacks features glucose" in check.reason


def test_schema_check_fails_on_different_label_classes(cast):
    type(cast.dataset_a).objects.filter(pk=cast.dataset_a.pk).update(label_classes=["no", "maybe"])
    _, report = report_for(cast)
    assert not report.check(governance.FEATURE_SCHEMA).passed


def test_schema_check_fails_when_partners_scale_their_features_differently(cast):
    type(cast.dataset_a).objects.filter(pk=cast.dataset_a.pk).update(centred=True)
    _, report = report_for(cast)
    check = report.check(governance.FEATURE_SCHEMA)
    assert not check.passed and "other feature transforms or centring" in check.reason
    cast.plan.refresh_from_db()  # the blocked request paused the plan, saying why
    assert cast.plan.status == TrainingPlan.Status.PAUSED and "feature_schema" in cast.plan.stopped_reason
    type(cast.dataset_a).objects.update(centred=True)  # every party alike: fine again
    _, rnd = plan_resume(actor=cast.admin, plan=cast.plan)
    assert governance.governance_report(rnd).check(governance.FEATURE_SCHEMA).passed


def test_budget_check_fails_when_a_dataset_cannot_afford_the_round(cast):
    type(cast.dataset_a).objects.filter(pk=cast.dataset_a.pk).update(epsilon_budget=0.01)
    rnd, report = report_for(cast)
    check = report.check(governance.BUDGET)
    assert not check.passed
    assert "budget exhausted for dataset org-a-records" in check.reason and "next round needs" in check.reason
    assert rnd.status == TrainingRound.Status.BLOCKED


def test_approvals_check_needs_every_participating_party(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    round_approve(actor=cast.rep_a, round=rnd, organisation=cast.org_a)
    check = governance.check_approvals(rnd)
    assert not check.passed and "1 of 3" in check.reason
    round_approve(actor=cast.rep_b, round=rnd, organisation=cast.org_b)
    round_approve(actor=cast.rep_c, round=rnd, organisation=cast.org_c)
    assert governance.check_approvals(rnd).passed


def test_approvals_check_with_a_quorum(cast):
    force_update(Agreement, cast.agreement.pk, approval_rule=Agreement.ApprovalRule.QUORUM, approval_quorum=2)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    round_approve(actor=cast.rep_a, round=rnd, organisation=cast.org_a)
    assert not governance.check_approvals(rnd).passed
    round_approve(actor=cast.rep_b, round=rnd, organisation=cast.org_b)
    rnd.refresh_from_db()
    assert governance.check_approvals(rnd).passed
    assert rnd.status == TrainingRound.Status.APPROVED


def test_approvals_check_fails_on_a_rejection(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    round_reject(actor=cast.rep_a, round=rnd, organisation=cast.org_a, reason="data under review")
    assert not governance.check_approvals(rnd).passed
    assert RoundApproval.objects.get(round=rnd).reason == "data under review"


def test_start_stage_adds_the_approvals_check(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    report = governance.governance_report(rnd, stage=governance.STAGE_START)
    assert not report.passed and [c.name for c in report.failures] == [governance.APPROVALS]


def test_blocked_round_keeps_its_report(cast):
    AgreementParty.objects.filter(agreement=cast.agreement).update(status=AgreementParty.Status.ACTIVE)
    Agreement.objects.filter(pk=cast.agreement.pk).update(status=Agreement.Status.TERMINATED)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    rnd.refresh_from_db()
    assert rnd.governance_report["passed"] is False
    failed = [c["name"] for c in rnd.governance_report["checks"] if not c["passed"]]
    assert failed == [governance.AGREEMENT_ACTIVE]
