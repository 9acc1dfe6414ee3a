"""Who is told what when a governance event is recorded (notifications.rules.RULES), and
that the inbox and outbox rows share the event's transaction."""

from __future__ import annotations

import pytest
from django.db import transaction

from federation.models import AgreementParty, GovernanceEvent, TrainingRound
from federation.services.agreements import agreement_create, agreement_sign, agreement_submit, party_give_exit_notice
from federation.services.plans import plan_stop
from federation.services.rounds import round_approve, round_request, round_start, standing_approval_give
from notifications.models import Delivery, Kind, Notification, NotificationPreference, Webhook
from notifications.rules import ledger_verification_check
from tests.factories import build_cast, terms

pytestmark = pytest.mark.django_db


def inbox(user, kind=None):
    qs = Notification.objects.filter(recipient=user)
    return list(qs.filter(kind=kind) if kind else qs)


def with_email(*users):
    for user in users:
        user.email = f"{user.username}@example.org"
        user.save(update_fields=["email"])


def test_each_representative_whose_approval_an_every_party_round_needs_is_notified(cast):
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL
    for rep in (cast.rep_a, cast.rep_b, cast.rep_c):
        [n] = inbox(rep, Kind.APPROVAL_WAITING)
        assert n.read_at is None and n.link == f"/rounds/{round.pk}/"
        assert n.event.kind == GovernanceEvent.Kind.ROUND_REQUESTED and n.event.round_id == round.pk
    for other in (cast.admin, cast.auditor, cast.outsider, cast.agent_a, cast.other_auditor):
        assert inbox(other, Kind.APPROVAL_WAITING) == []


def test_an_organisation_covered_by_a_standing_approval_is_not_asked(cast):
    standing_approval_give(actor=cast.rep_a, plan=cast.plan, organisation=cast.org_a, max_rounds=3)
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL
    assert inbox(cast.rep_a, Kind.APPROVAL_WAITING) == []
    assert len(inbox(cast.rep_b, Kind.APPROVAL_WAITING)) == 1 and len(inbox(cast.rep_c, Kind.APPROVAL_WAITING)) == 1


def test_an_approval_withdraws_what_its_organisation_was_not_yet_sent(cast):
    with_email(cast.rep_a, cast.rep_b)
    round = round_request(actor=cast.admin, plan=cast.plan)
    round_approve(actor=cast.rep_a, round=round, organisation=cast.org_a)
    assert inbox(cast.rep_a, Kind.APPROVAL_WAITING) == []
    assert len(inbox(cast.rep_b, Kind.APPROVAL_WAITING)) == 1
    mail = {d.recipient_id: d.status for d in Delivery.objects.filter(kind=Kind.APPROVAL_WAITING)}
    assert mail == {cast.rep_a.pk: Delivery.Status.CANCELLED, cast.rep_b.pk: Delivery.Status.PENDING}


def test_notifications_roll_back_with_the_event_that_caused_them(cast):
    with_email(cast.rep_a)
    Webhook.objects.create(organisation=cast.org_a, url="http://127.0.0.1:9/hook", secret="s")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        round_request(actor=cast.admin, plan=cast.plan)
        assert Notification.objects.filter(kind=Kind.APPROVAL_WAITING).count() == 3
        assert Delivery.objects.count() == 2  # rep A's email, org A's webhook
        raise Boom
    assert not Notification.objects.filter(kind=Kind.APPROVAL_WAITING).exists()
    assert not Delivery.objects.exists() and not TrainingRound.objects.exists()


def test_delivery_is_enqueued_only_after_commit(cast, django_capture_on_commit_callbacks):
    with_email(cast.rep_a)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        round_request(actor=cast.admin, plan=cast.plan)
    assert len(callbacks) >= 1
    assert Delivery.objects.get().status == Delivery.Status.PENDING


def test_a_blocked_round_tells_its_parties_and_asks_nobody_to_approve(db):
    cast = build_cast(budget=0.05)  # one round costs far more: blocked at request
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.BLOCKED
    assert not Notification.objects.filter(kind=Kind.APPROVAL_WAITING).exists()
    for user in (cast.rep_a, cast.rep_b, cast.rep_c, cast.admin):
        assert len(inbox(user, Kind.ROUND_BLOCKED)) == 1
        exhausted = inbox(user, Kind.BUDGET_EXHAUSTED)
        assert len(exhausted) == (3 if user == cast.admin else 1)
    assert inbox(cast.outsider) == [] and inbox(cast.auditor) == []


def _start_round(cast) -> TrainingRound:
    from tests.accounting.receipting import enrol_agents

    enrol_agents(cast)  # secure aggregation needs the partners' agents enrolled
    round = round_request(actor=cast.admin, plan=cast.plan)
    for rep, org in ((cast.rep_a, cast.org_a), (cast.rep_b, cast.org_b), (cast.rep_c, cast.org_c)):
        round_approve(actor=rep, round=round, organisation=org)
    started = round_start(round_id=round.pk)
    assert started.status == TrainingRound.Status.RUNNING, started.reason
    return started


def test_a_dataset_past_80_percent_of_its_budget_warns_its_representatives_and_the_administrators(db):
    # One round costs org B's dataset (300 records) ~2.50 of 3.0 (83%); a second would bring
    # it to ~2.98, which still fits. Orgs A and C spend ~69% and ~60%.
    cast = build_cast(budget=3.0)
    _start_round(cast)
    [warning] = inbox(cast.rep_b, Kind.BUDGET_80)
    assert "83% spent" in warning.title
    assert inbox(cast.rep_a, Kind.BUDGET_80) == [] and inbox(cast.rep_c, Kind.BUDGET_80) == []
    assert len(inbox(cast.admin, Kind.BUDGET_80)) == 1
    assert not Notification.objects.filter(kind=Kind.BUDGET_EXHAUSTED).exists()
    # Nobody is asked to approve a round that runs.
    assert not Notification.objects.filter(kind=Kind.APPROVAL_WAITING).exists()


def test_a_budget_that_cannot_pay_for_the_next_round_is_exhausted(db):
    cast = build_cast(budget=2.6)  # org B: ~2.50 spent, the next round would need ~2.98
    _start_round(cast)
    assert len(inbox(cast.rep_b, Kind.BUDGET_EXHAUSTED)) == 1
    assert inbox(cast.rep_a, Kind.BUDGET_EXHAUSTED) == [] and inbox(cast.rep_c, Kind.BUDGET_EXHAUSTED) == []


def test_signature_requests_go_to_every_party_and_a_signature_withdraws_its_own(cast):
    agreement = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Second consortium"))
    agreement = agreement_submit(actor=cast.admin, agreement=agreement)
    assert [n.link for n in inbox(cast.rep_a, Kind.SIGNATURE_REQUESTED)] == [f"/agreements/{agreement.pk}/"]
    assert len(inbox(cast.rep_b, Kind.SIGNATURE_REQUESTED)) == 1
    assert inbox(cast.rep_c, Kind.SIGNATURE_REQUESTED) == []
    agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_a, terms_hash=agreement.terms_hash)
    assert inbox(cast.rep_a, Kind.SIGNATURE_REQUESTED) == []
    assert len(inbox(cast.rep_b, Kind.SIGNATURE_REQUESTED)) == 1


def test_exit_notice_and_exit_tell_every_party_and_the_administrators(db):
    cast = build_cast(agreement_terms={"exit_notice_days": 0})
    party_give_exit_notice(actor=cast.rep_c, agreement=cast.agreement, organisation=cast.org_c)
    assert AgreementParty.objects.get(agreement=cast.agreement, organisation=cast.org_c).status == AgreementParty.Status.EXITED
    for user in (cast.rep_a, cast.rep_b, cast.rep_c, cast.admin):
        assert len(inbox(user, Kind.EXIT_NOTICE)) == 1
        assert len(inbox(user, Kind.EXIT_EFFECTIVE)) == 1
    assert inbox(cast.outsider) == []


def test_a_stopped_plan_tells_the_parties(cast):
    plan_stop(actor=cast.admin, plan=cast.plan, reason="paused for review")
    for user in (cast.rep_a, cast.rep_b, cast.rep_c, cast.admin):
        [n] = inbox(user, Kind.PLAN_PAUSED)
        assert "paused for review" in n.body


def test_each_person_chooses_the_channels_per_kind(cast):
    with_email(cast.rep_a, cast.rep_b, cast.rep_c)
    NotificationPreference.objects.create(user=cast.rep_a, kind=Kind.APPROVAL_WAITING, in_app=False, email=True)
    NotificationPreference.objects.create(user=cast.rep_b, kind=Kind.APPROVAL_WAITING, in_app=True, email=False)
    NotificationPreference.objects.create(user=cast.rep_c, kind=Kind.ROUND_COMPLETED, in_app=False, email=False)
    round_request(actor=cast.admin, plan=cast.plan)
    assert inbox(cast.rep_a) == [] and len(inbox(cast.rep_b)) == 1 and len(inbox(cast.rep_c)) == 1
    emailed = set(Delivery.objects.filter(channel=Delivery.Channel.EMAIL).values_list("target", flat=True))
    assert emailed == {"rep-a@example.org", "rep-c@example.org"}


def test_an_organisations_webhook_gets_one_call_per_fact_and_others_none(cast):
    from tests.factories import UserFactory, member

    member(UserFactory(username="rep-a2"), cast.org_a)  # a second representative of org A
    hook_a = Webhook.objects.create(organisation=cast.org_a, url="http://127.0.0.1:9/a", secret="s")
    Webhook.objects.create(organisation=cast.org_b, url="http://127.0.0.1:9/b", secret="s", kinds=[Kind.ROUND_COMPLETED])
    round = round_request(actor=cast.admin, plan=cast.plan)
    [call] = Delivery.objects.filter(channel=Delivery.Channel.WEBHOOK)
    assert call.webhook == hook_a and call.kind == Kind.APPROVAL_WAITING
    assert call.payload["data"]["round"] == round.pk and call.payload["organisation"] == "org-a"
    assert call.payload["delivery"] == call.idempotency_key


def test_a_failing_ledger_tells_the_administrators_once(db):
    from tests.tamper import triggers_lifted

    cast = build_cast(budget=8.0)
    _start_round(cast)
    assert ledger_verification_check() == []
    from accounting.models import DatasetBudget

    with triggers_lifted():
        DatasetBudget.objects.filter(dataset=cast.dataset_a).update(epsilon_spent=0.01)
    first = ledger_verification_check()
    assert {n.recipient for n in first} == {cast.admin, cast.rep_a}
    assert all(n.kind == Kind.LEDGER_VERIFICATION_FAILED for n in first)
    assert ledger_verification_check() == []  # the same failure is told once
