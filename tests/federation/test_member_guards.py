"""An agreement's parties and auditors are signed terms (ARCHITECTURE.md, Trust 4): once a
version has a signature, nobody adds, removes or re-points them in place -- not through the
ORM (federation/member_guards.py), not through bulk writes or raw SQL (the database triggers),
not through a service that used to add auditors to an active agreement. An amendment still
changes them, and signing refuses a hash the rows no longer match."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from federation.guards import RecordFrozen
from federation.models import Agreement, AgreementParty
from federation.services.agreements import (
    agreement_amend,
    agreement_assign_auditor,
    agreement_create,
    agreement_sign,
    party_give_exit_notice,
)
from fedgov.errors import InvalidState
from tests.factories import OrganisationFactory, terms

pytestmark = pytest.mark.django_db


def sql(statement, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)


def refused_by_the_database(statement, params=()):
    with pytest.raises(DatabaseError, match="amendment"):
        sql(statement, params)


def frozen(match: str = ""):
    """pytest.raises(RecordFrozen) inside a savepoint: a related manager writes in an atomic
    block without one, so its refusal would otherwise break the test's transaction."""
    from contextlib import contextmanager

    @contextmanager
    def block():
        with pytest.raises(RecordFrozen, match=match) as excinfo, transaction.atomic():
            yield excinfo

    return block()


def members(agreement) -> tuple[list[str], list[str]]:
    agreement = Agreement.objects.get(pk=agreement.pk)
    return sorted(agreement.parties.values_list("slug", flat=True)), sorted(agreement.auditors.values_list("username", flat=True))


def test_the_orm_refuses_a_new_party_or_auditor_on_a_signed_agreement(cast):
    before = members(cast.agreement)
    newcomer = OrganisationFactory(slug="newcomer")
    with pytest.raises(RecordFrozen, match="parties are part of the signed terms") as excinfo:
        AgreementParty.objects.create(agreement=cast.agreement, organisation=newcomer)
    assert excinfo.value.code == "record_frozen"
    with frozen("auditors"):
        cast.agreement.auditors.add(cast.other_auditor)
    with frozen("auditors"):
        cast.other_auditor.audited_agreements.add(cast.agreement)  # from the user's side
    assert members(cast.agreement) == before


def test_the_orm_refuses_removing_or_repointing_a_party_or_an_auditor(cast):
    before = members(cast.agreement)
    party = AgreementParty.objects.get(agreement=cast.agreement, organisation=cast.org_c)
    with frozen("parties"):
        party.delete()
    with frozen("parties"):
        AgreementParty.objects.filter(agreement=cast.agreement).delete()
    party.organisation = OrganisationFactory(slug="impostor")
    with frozen("parties"):
        party.save()
    with frozen("auditors"):
        cast.agreement.auditors.remove(cast.auditor)
    with frozen("auditors"):
        cast.agreement.auditors.clear()
    with frozen("auditors"):
        cast.auditor.audited_agreements.clear()
    assert members(cast.agreement) == before


def test_the_database_refuses_what_bypasses_the_models(cast):
    before = members(cast.agreement)
    newcomer = OrganisationFactory(slug="newcomer")
    with pytest.raises(DatabaseError):  # bulk_create sends no signal
        with transaction.atomic():
            AgreementParty.objects.bulk_create([AgreementParty(agreement=cast.agreement, organisation=newcomer)])
    with pytest.raises(DatabaseError):  # neither does QuerySet.update
        with transaction.atomic():
            AgreementParty.objects.filter(agreement=cast.agreement, organisation=cast.org_c).update(organisation=newcomer)
    refused_by_the_database(
        "INSERT INTO federation_agreementparty (agreement_id, organisation_id, status) VALUES (%s, %s, 'active')",
        [cast.agreement.pk, newcomer.pk],
    )
    with pytest.raises(DatabaseError):  # the auditors' through model, written directly, sends no m2m signal
        with transaction.atomic():
            Agreement.auditors.through.objects.create(agreement=cast.agreement, user=cast.other_auditor)
    refused_by_the_database("DELETE FROM federation_agreementparty WHERE agreement_id = %s", [cast.agreement.pk])
    refused_by_the_database(
        "INSERT INTO federation_agreement_auditors (agreement_id, user_id) VALUES (%s, %s)", [cast.agreement.pk, cast.other_auditor.pk]
    )
    refused_by_the_database("DELETE FROM federation_agreement_auditors WHERE agreement_id = %s", [cast.agreement.pk])
    refused_by_the_database(
        "UPDATE federation_agreement_auditors SET user_id = %s WHERE agreement_id = %s", [cast.other_auditor.pk, cast.agreement.pk]
    )
    assert members(cast.agreement) == before


def test_an_auditor_of_a_signed_agreement_is_deactivated_not_deleted(cast):
    with frozen("deactivate the account instead"):
        cast.auditor.delete()
    assert members(cast.agreement)[1] == ["auditor"]
    cast.outsider.delete()  # a user who audits nothing goes as before


def test_a_partys_exit_is_not_a_change_of_the_list(cast):
    party = party_give_exit_notice(actor=cast.rep_c, agreement=cast.agreement, organisation=cast.org_c)
    assert party.status in (AgreementParty.Status.NOTICE, AgreementParty.Status.EXITED)
    assert members(cast.agreement)[0] == ["org-a", "org-b", "org-c"]


def test_a_drafts_parties_and_auditors_stay_editable(cast):
    draft = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Draft terms"))
    AgreementParty.objects.create(agreement=draft, organisation=cast.org_c)
    draft.auditors.add(cast.other_auditor)
    AgreementParty.objects.filter(agreement=draft, organisation=cast.org_c).delete()
    assert members(draft) == (["org-a", "org-b"], ["other-auditor"])


def test_an_amendment_changes_the_lists_and_hashes_what_it_writes(cast):
    newcomer = OrganisationFactory(slug="newcomer")
    amended = agreement_amend(
        actor=cast.admin, agreement=cast.agreement, parties=[cast.org_a, cast.org_b, cast.org_c, newcomer], auditors=[cast.other_auditor]
    )
    assert amended.status == Agreement.Status.AWAITING_SIGNATURES and amended.version == cast.agreement.version + 1
    assert members(amended) == (["newcomer", "org-a", "org-b", "org-c"], ["other-auditor"])
    amended.refresh_from_db()
    assert amended.terms_hash == amended.compute_terms_hash()
    # The first signature of the new version freezes the lists again.
    agreement_sign(actor=cast.rep_a, agreement=amended, organisation=cast.org_a, terms_hash=amended.terms_hash)
    with frozen("auditors"):
        amended.auditors.add(cast.auditor)


def test_assigning_an_auditor_to_a_signed_agreement_is_an_amendment(cast):
    version = cast.agreement.version
    amended = agreement_assign_auditor(actor=cast.admin, agreement=cast.agreement, auditor=cast.other_auditor)
    assert amended.status == Agreement.Status.AWAITING_SIGNATURES and amended.version == version + 1
    assert members(amended)[1] == ["auditor", "other-auditor"]
    amended.refresh_from_db()
    assert amended.terms_hash == amended.compute_terms_hash()
    assert amended.events.filter(kind="auditor_assigned").exists()


def test_signing_refuses_a_hash_the_rows_no_longer_match(cast):
    """Before a version's first signature the database lets its lists change (an amendment
    writes them then); a change made there below the services is caught at signing."""
    amended = agreement_amend(actor=cast.admin, agreement=cast.agreement, max_delta=cast.agreement.max_delta / 2)
    sql("INSERT INTO federation_agreement_auditors (agreement_id, user_id) VALUES (%s, %s)", [amended.pk, cast.other_auditor.pk])
    with pytest.raises(InvalidState, match="no longer match the terms hash"):
        agreement_sign(actor=cast.rep_a, agreement=amended, organisation=cast.org_a, terms_hash=amended.terms_hash)
    assert not amended.signatures.filter(version=amended.version).exists()
