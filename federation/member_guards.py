"""An agreement's parties and auditors are signed terms (ARCHITECTURE.md, Trust 4).

`Agreement.terms()` lists both, so they are inside the hash every party signs. Adding an
organisation or an auditor to a signed agreement in place would make the stored hash describe
terms the agreement no longer has, and give someone access the parties never agreed to. The
models refuse it here (a clear `record_frozen` error for anyone using the ORM: a shell, a
script, a careless service) and the database refuses it again below them
(federation/triggers.py) for raw SQL and bulk writes that send no signal. The rule is
`Agreement.members_frozen`; an amendment (services.agreements.agreement_amend) is the way to
change either list.

A party's own exit (its `status`, notice and effective dates) is not a change of the list
and stays writable. Deleting a user who audits a signed agreement would remove them from its
auditors too: refused, with the advice to deactivate the account instead.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, pre_delete, pre_save

from .guards import RecordFrozen
from .models import MSG_MEMBERS_SIGNED, Agreement, AgreementParty


def _refuse_if_frozen(agreement_id, what: str) -> None:
    status = Agreement.members_frozen(agreement_id)
    if status is not None:
        raise RecordFrozen(
            MSG_MEMBERS_SIGNED.format(pk=agreement_id, status=status, what=what), model="Agreement", pk=agreement_id, fields=[what]
        )


def _party_saved(sender, instance: AgreementParty, raw: bool = False, update_fields=None, **kwargs) -> None:
    if raw:  # loaddata of a fixture: the rows as they were (the database's triggers still apply)
        return
    if instance._state.adding:
        _refuse_if_frozen(instance.agreement_id, "parties")
        return
    if update_fields is not None and not {"agreement", "organisation"} & set(update_fields):
        return  # an exit (status, notice, dates): nothing of the list to read
    stored = AgreementParty.objects.filter(pk=instance.pk).values("agreement_id", "organisation_id").first()
    if stored is None or (stored["agreement_id"], stored["organisation_id"]) != (instance.agreement_id, instance.organisation_id):
        _refuse_if_frozen(instance.agreement_id, "parties")
        if stored is not None:
            _refuse_if_frozen(stored["agreement_id"], "parties")


def _party_deleted(sender, instance: AgreementParty, **kwargs) -> None:
    _refuse_if_frozen(instance.agreement_id, "parties")


def _auditors_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    if action not in ("pre_add", "pre_remove", "pre_clear"):
        return
    if not reverse:  # agreement.auditors.add/remove/set/clear
        _refuse_if_frozen(instance.pk, "auditors")
        return
    # user.audited_agreements.add/remove/clear: every agreement named (all of them for a clear)
    agreement_ids = pk_set if pk_set else instance.audited_agreements.values_list("pk", flat=True)
    for agreement_id in sorted(agreement_ids):
        _refuse_if_frozen(agreement_id, "auditors")


def _user_deleted(sender, instance, **kwargs) -> None:
    for agreement_id in sorted(instance.audited_agreements.values_list("pk", flat=True)):
        status = Agreement.members_frozen(agreement_id)
        if status is not None:
            raise RecordFrozen(
                f"{instance.get_username()} audits agreement {agreement_id} ({status}), whose auditors are signed terms: "
                "deactivate the account instead of deleting it (an amendment removes an auditor).",
                model="Agreement", pk=agreement_id, fields=["auditors"],
            )


def connect_signals() -> None:
    pre_delete.connect(_user_deleted, sender=get_user_model(), dispatch_uid="member_guards_user_deleted")
    pre_save.connect(_party_saved, sender=AgreementParty, dispatch_uid="member_guards_party_saved")
    pre_delete.connect(_party_deleted, sender=AgreementParty, dispatch_uid="member_guards_party_deleted")
    m2m_changed.connect(_auditors_changed, sender=Agreement.auditors.through, dispatch_uid="member_guards_auditors")
