"""services/agreements.py refuses bad input with a clear error and changes nothing."""

from datetime import date, timedelta

import pytest
from django.db import IntegrityError, transaction

from federation.models import Agreement, AgreementParty, AgreementSignature, Dataset, GovernanceEvent
from federation.services.agreements import (
    agreement_amend,
    agreement_create,
    agreement_sign,
    agreement_submit,
    agreement_update_terms,
    agreements_apply_due_changes,
    party_give_exit_notice,
)
from fedgov.errors import InvalidState, PermissionDenied, ValidationFailed
from tests.factories import OrganisationFactory, terms
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
