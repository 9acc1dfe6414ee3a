"""Writes for agreements: drafting, signing, amending, suspending, exits.

Lifecycle: draft -> awaiting_signatures -> active -> suspended | terminated | expired.
The terms freeze the moment signing starts; after that a change is an amendment, which bumps
the version, recomputes the hash and needs every party's signature again.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from fedgov.errors import InvalidState, ValidationFailed

from ..access import require_administrator, require_representative
from ..i18n import in_english
from ..models import AUDITORS_GROUP, TERM_FIELDS, Agreement, AgreementParty, AgreementSignature, GovernanceEvent, Organisation
from .common import event_record, field_error, validated

User = get_user_model()

MSG_TERMS_FROZEN = "The terms of '{title}' are frozen since signing started; change them with an amendment."
MSG_NOT_A_PARTY = "{organisation} is not a party to '{title}'."
MSG_ALREADY_SIGNED = "{organisation} already signed version {version} of '{title}'."
MSG_TERMS_DRIFTED = (
    "'{title}' v{version}: its parties or auditors no longer match the terms hash being signed "
    "(changed below the services); an administrator must amend the agreement."
)
MSG_HASH_MISMATCH = "The terms changed since you read them: you signed {given}, the current terms hash is {current}."
MSG_NOT_SIGNABLE = "'{title}' is {status}; only an agreement awaiting signatures can be signed."
MSG_NO_PARTIES = "An agreement needs at least two parties."
MSG_EXIT_TWICE = "{organisation} already gave exit notice from '{title}' (effective {effective:%Y-%m-%d})."

TERM_INPUTS = TERM_FIELDS  # every term the model serialises for signing, and nothing else


# The largest delta an agreement may allow. Delta is the probability that the guarantee fails
# outright, and a mechanism with delta >= 1/n may publish one of n records in the clear; the rule
# of thumb is delta well below 1/n. A ceiling of 1e-3 refuses the values that are wrong for every
# dataset of a thousand records or more (0.5, 0.1, 0.01); each dataset's own delta is then set
# for its size, within this ceiling (ARCHITECTURE.md, Privacy model 1).
MAX_DELTA_CEILING = 1e-3
MSG_DELTA_RANGE = "The maximum delta must be between 0 and 1e-3: delta is the chance that the guarantee fails, and must stay well below 1/records."
MSG_ROUND_OVER_BUDGET = "The maximum epsilon per round ({per_round:g}) exceeds the maximum epsilon budget ({budget:g}): no dataset could run one round."
MSG_MIN_PARTICIPANTS = "A round needs at least two participants: secure aggregation hides one update only among others."
MSG_QUORUM_MISSING = "A quorum rule needs the number of approvals k."
MSG_QUORUM_RANGE = "The quorum must be at least 1."
MSG_QUORUM_OVER = "The quorum ({k}) exceeds the number of parties ({n})."
MSG_MIN_OVER = "The minimum participants ({k}) exceeds the number of parties ({n})."
MSG_DATES = "The agreement must end after it starts (valid until > valid from)."


def _clean_purposes(purposes) -> list[str]:
    if isinstance(purposes, str):
        purposes = [p for p in (line.strip() for line in purposes.replace(";", "\n").splitlines()) if p]
    if not isinstance(purposes, (list, tuple)) or not purposes:
        raise field_error("purposes", "List at least one permitted purpose.")
    cleaned = []
    for p in purposes:
        if not isinstance(p, str) or not p.strip():
            raise field_error("purposes", "Each purpose must be a non-empty phrase.")
        cleaned.append(p.strip())
    return cleaned


def agreement_terms_problems(*, terms: dict, parties=None) -> dict[str, list[str]]:
    """Every rule the terms break, field by field, all at once (issue 17: one submit tells the
    whole story). `terms` may be partial (a form whose other fields did not parse): a rule
    is checked when the values it needs are there. `parties` is None when not being set."""
    problems: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    def number(name):
        value = terms.get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    valid_from, valid_until = terms.get("valid_from"), terms.get("valid_until")
    if isinstance(valid_from, date) and isinstance(valid_until, date) and valid_until <= valid_from:
        add("valid_until", MSG_DATES)
    for name, message in (
        ("min_noise_multiplier", "The minimum noise multiplier z must be greater than 0."),
        ("max_clip_norm", "The maximum clip norm must be greater than 0."),
        ("max_epsilon_per_round", "The maximum epsilon per round must be greater than 0."),
        ("max_epsilon_budget", "The maximum epsilon budget must be greater than 0."),
    ):
        value = number(name)
        if value is not None and not value > 0:  # `not >` also refuses NaN
            add(name, message)
    delta = number("max_delta")
    if delta is not None and not (0 < delta <= MAX_DELTA_CEILING):
        add("max_delta", MSG_DELTA_RANGE)
    per_round, budget = number("max_epsilon_per_round"), number("max_epsilon_budget")
    if per_round is not None and budget is not None and per_round > 0 and budget > 0 and per_round > budget:
        add("max_epsilon_per_round", MSG_ROUND_OVER_BUDGET.format(per_round=per_round, budget=budget))
    minimum = number("min_participants")
    if minimum is not None and minimum < 2:
        add("min_participants", MSG_MIN_PARTICIPANTS)
    notice = number("exit_notice_days")
    if notice is not None and notice < 0:
        add("exit_notice_days", "The exit notice cannot be negative.")
    quorum = number("approval_quorum")
    is_quorum = terms.get("approval_rule") == Agreement.ApprovalRule.QUORUM
    if is_quorum and not quorum:
        add("approval_quorum", MSG_QUORUM_MISSING if quorum is None else MSG_QUORUM_RANGE)
    elif is_quorum and quorum < 1:
        add("approval_quorum", MSG_QUORUM_RANGE)
    if parties is not None:
        n = len({getattr(o, "pk", o) for o in parties})
        if n < 2:
            add("parties", MSG_NO_PARTIES)
        if is_quorum and quorum and quorum > n:
            add("approval_quorum", MSG_QUORUM_OVER.format(k=quorum, n=n))
        if minimum is not None and minimum >= 2 and minimum > n:
            add("min_participants", MSG_MIN_OVER.format(k=minimum, n=n))
    return problems


def _validate_terms(agreement: Agreement, parties=None) -> None:
    """Refuse the terms with every problem at once: the rules above, then the model's own."""
    problems = agreement_terms_problems(terms={name: getattr(agreement, name) for name in TERM_INPUTS}, parties=parties)
    try:
        validated(agreement, exclude=["parties", "auditors", *problems])
    except ValidationFailed as exc:
        for name, messages in (exc.details.get("fields") or {}).items():
            problems.setdefault(name, []).extend(messages)
    if problems:
        summary = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in problems.items())
        raise ValidationFailed(f"Invalid agreement: {summary}", fields=problems)


def _set_parties(agreement: Agreement, parties: list[Organisation]) -> None:
    """Link the parties; the counts were checked with the terms (_validate_terms)."""
    organisations = list({o.pk: o for o in parties}.values())
    AgreementParty.objects.filter(agreement=agreement).exclude(organisation__in=organisations).delete()
    for organisation in organisations:
        AgreementParty.objects.get_or_create(agreement=agreement, organisation=organisation)


def _checked_auditors(auditors) -> list:
    auditors = list(auditors or [])
    for user in auditors:
        if not user.groups.filter(name=AUDITORS_GROUP).exists():
            raise field_error("auditors", f"{user.username} is not an auditor.")
    return auditors


def _set_auditors(agreement: Agreement, auditors) -> None:
    agreement.auditors.set(_checked_auditors(auditors))


@transaction.atomic
def agreement_create(*, actor, parties: list[Organisation], auditors=(), **terms) -> Agreement:
    require_administrator(actor, what="agreement", action="create")
    unknown = set(terms) - set(TERM_INPUTS)
    if unknown:
        raise ValidationFailed(f"Unknown agreement terms: {', '.join(sorted(unknown))}.")
    terms["purposes"] = _clean_purposes(terms.get("purposes"))
    agreement = Agreement(created_by=actor, **terms)
    _validate_terms(agreement, parties)
    agreement.save()
    _set_parties(agreement, parties)
    _set_auditors(agreement, auditors)
    event_record(
        kind=GovernanceEvent.Kind.AGREEMENT_CREATED,
        message=f"Agreement '{agreement.title}' drafted with {', '.join(sorted(o.slug for o in parties))}.",
        actor=actor,
        agreement=agreement,
    )
    return agreement


@transaction.atomic
def agreement_update_terms(*, actor, agreement: Agreement, parties=None, auditors=None, **terms) -> Agreement:
    """Edit a draft. Once signing has started the terms are frozen: use agreement_amend."""
    require_administrator(actor, what="agreement", action="edit")
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.terms_frozen:
        raise InvalidState(MSG_TERMS_FROZEN.format(title=agreement.title))
    before = agreement.terms()  # with the parties' slugs and the auditors' usernames
    _apply_terms(agreement, terms)
    _validate_terms(agreement, _parties_for_check(agreement, parties))
    agreement.save()
    if parties is not None:
        _set_parties(agreement, parties)
    if auditors is not None:
        _set_auditors(agreement, auditors)
    # A draft is not signed yet, but who changed which term before it went out for signature
    # is governance history too (issue 17).
    after = agreement.terms()
    changed = sorted(k for k in after if before.get(k) != after.get(k))
    event_record(
        kind=GovernanceEvent.Kind.AGREEMENT_EDITED,
        message=f"Draft '{agreement.title}' edited ({', '.join(changed) or 'no term changed'}).",
        actor=actor,
        agreement=agreement,
        details={"changed": changed, "before": before, "after": after},
    )
    return agreement


def _parties_for_check(agreement: Agreement, parties) -> list:
    """The parties the terms will have: the new list, or the current ones."""
    if parties is not None:
        return list(parties)
    return list(agreement.party_links.values_list("organisation_id", flat=True))


def _apply_terms(agreement: Agreement, terms: dict) -> None:
    unknown = set(terms) - set(TERM_INPUTS)
    if unknown:
        raise ValidationFailed(f"Unknown agreement terms: {', '.join(sorted(unknown))}.")
    if "purposes" in terms:
        terms["purposes"] = _clean_purposes(terms["purposes"])
    for name, value in terms.items():
        setattr(agreement, name, value)


@transaction.atomic
def agreement_submit(*, actor, agreement: Agreement) -> Agreement:
    """Freeze the terms and open them for signature."""
    require_administrator(actor, what="agreement", action="submit")
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.status != Agreement.Status.DRAFT:
        raise InvalidState(f"'{agreement.title}' is {in_english(agreement.get_status_display()).lower()}, not a draft.")
    if agreement.party_links.count() < 2:
        raise field_error("parties", MSG_NO_PARTIES)
    agreement.status = Agreement.Status.AWAITING_SIGNATURES
    agreement.terms_hash = agreement.compute_terms_hash()
    agreement.save(update_fields=["status", "terms_hash"])
    event_record(
        kind=GovernanceEvent.Kind.AGREEMENT_SUBMITTED,
        message=f"Terms of '{agreement.title}' v{agreement.version} frozen for signature (hash {agreement.terms_hash[:12]}…).",
        actor=actor,
        agreement=agreement,
        details={"terms_hash": agreement.terms_hash, "terms": agreement.terms()},
    )
    return agreement


@transaction.atomic
def agreement_sign(*, actor, agreement: Agreement, organisation: Organisation, terms_hash: str) -> AgreementSignature:
    """The organisation's representative signs the hash of the terms they read.

    The hash must equal the current terms hash: a representative never signs terms that
    changed under them. The last signature activates the agreement.
    """
    # Lock the agreement: two parties signing at once must both be seen by the activation.
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    require_representative(actor, organisation=organisation, agreement=agreement, action="sign this agreement")
    if not agreement.party_links.filter(organisation=organisation).exists():
        raise ValidationFailed(MSG_NOT_A_PARTY.format(organisation=organisation.name, title=agreement.title))
    if agreement.status != Agreement.Status.AWAITING_SIGNATURES:
        raise InvalidState(MSG_NOT_SIGNABLE.format(title=agreement.title, status=in_english(agreement.get_status_display()).lower()))
    if AgreementSignature.objects.filter(agreement=agreement, organisation=organisation, version=agreement.version).exists():
        raise InvalidState(MSG_ALREADY_SIGNED.format(organisation=organisation.name, version=agreement.version, title=agreement.title))
    terms_hash = (terms_hash or "").strip().lower()
    if terms_hash != agreement.terms_hash:
        raise ValidationFailed(MSG_HASH_MISMATCH.format(given=terms_hash or "(nothing)", current=agreement.terms_hash))
    if agreement.compute_terms_hash() != agreement.terms_hash:
        # The rows no longer hash to what is being signed (a party or an auditor changed below
        # the services): nobody signs a hash that does not describe the agreement as it stands.
        raise InvalidState(MSG_TERMS_DRIFTED.format(title=agreement.title, version=agreement.version))
    signature = AgreementSignature.objects.create(
        agreement=agreement, organisation=organisation, version=agreement.version, terms_hash=terms_hash, signed_by=actor
    )
    event_record(
        kind=GovernanceEvent.Kind.AGREEMENT_SIGNED,
        message=f"{organisation.name} signed '{agreement.title}' v{agreement.version}.",
        actor=actor,
        agreement=agreement,
        organisation=organisation,
        details={"terms_hash": terms_hash, "version": agreement.version},
    )
    signed = set(
        AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).values_list("organisation_id", flat=True)
    )
    parties = set(agreement.party_links.exclude(status=AgreementParty.Status.EXITED).values_list("organisation_id", flat=True))
    if parties <= signed:
        agreement.status = Agreement.Status.ACTIVE
        agreement.activated_at = timezone.now()
        agreement.save(update_fields=["status", "activated_at"])
        event_record(
            kind=GovernanceEvent.Kind.AGREEMENT_ACTIVATED,
            message=f"'{agreement.title}' v{agreement.version} is active: every party signed.",
            actor=actor,
            agreement=agreement,
        )
    return signature


@transaction.atomic
def agreement_amend(*, actor, agreement: Agreement, parties=None, auditors=None, **terms) -> Agreement:
    """Change the terms of a signed (or being signed) agreement: a new version that every
    party must sign again. Until then the agreement is not active and no round runs."""
    require_administrator(actor, what="agreement", action="amend")
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.status not in (Agreement.Status.AWAITING_SIGNATURES, Agreement.Status.ACTIVE, Agreement.Status.SUSPENDED):
        raise InvalidState(f"'{agreement.title}' is {in_english(agreement.get_status_display()).lower()} and cannot be amended.")
    before = agreement.terms()
    _apply_terms(agreement, terms)
    _validate_terms(agreement, _parties_for_check(agreement, parties))
    agreement.version += 1
    agreement.status = Agreement.Status.AWAITING_SIGNATURES
    agreement.activated_at = None
    new_parties = list({o.pk: o for o in parties}.values()) if parties is not None else None
    new_auditors = _checked_auditors(auditors) if auditors is not None else None
    # New terms, version + 1, back to signature and the new hash (of the lists about to be
    # written) in one UPDATE: the only change of signed terms the model and database guards
    # let through (ARCHITECTURE.md, Trust 4). Then the parties and auditors, which the guards
    # accept while the new version awaits its first signature (federation/member_guards.py).
    agreement.terms_hash = agreement.compute_terms_hash(parties=new_parties, auditors=new_auditors)
    agreement.save()
    if new_parties is not None:
        _set_parties(agreement, new_parties)
    if new_auditors is not None:
        agreement.auditors.set(new_auditors)
    after = agreement.terms()
    changed = sorted(k for k in after if before.get(k) != after.get(k) and k != "version")
    event_record(
        kind=GovernanceEvent.Kind.AGREEMENT_AMENDED,
        message=f"'{agreement.title}' amended to v{agreement.version} ({', '.join(changed) or 'no term changed'}); new signatures needed.",
        actor=actor,
        agreement=agreement,
        details={"before": before, "after": after, "terms_hash": agreement.terms_hash},
    )
    return agreement


def _set_status(*, actor, agreement: Agreement, allowed_from: tuple, to: str, kind: str, reason: str) -> Agreement:
    require_administrator(actor, what="agreement", action="change the status of")
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.status not in allowed_from:
        raise InvalidState(
            f"'{agreement.title}' is {in_english(agreement.get_status_display()).lower()}; cannot become {in_english(Agreement.Status(to).label).lower()}."
        )
    agreement.status = to
    agreement.save(update_fields=["status"])
    event_record(kind=kind, message=f"'{agreement.title}': {in_english(Agreement.Status(to).label).lower()}. {reason}".strip(), actor=actor, agreement=agreement)
    return agreement


@transaction.atomic
def agreement_suspend(*, actor, agreement: Agreement, reason: str = "") -> Agreement:
    return _set_status(
        actor=actor, agreement=agreement, allowed_from=(Agreement.Status.ACTIVE,), to=Agreement.Status.SUSPENDED,
        kind=GovernanceEvent.Kind.AGREEMENT_SUSPENDED, reason=reason,
    )


@transaction.atomic
def agreement_resume(*, actor, agreement: Agreement, reason: str = "") -> Agreement:
    return _set_status(
        actor=actor, agreement=agreement, allowed_from=(Agreement.Status.SUSPENDED,), to=Agreement.Status.ACTIVE,
        kind=GovernanceEvent.Kind.AGREEMENT_RESUMED, reason=reason,
    )


@transaction.atomic
def agreement_terminate(*, actor, agreement: Agreement, reason: str = "") -> Agreement:
    return _set_status(
        actor=actor, agreement=agreement,
        allowed_from=(Agreement.Status.DRAFT, Agreement.Status.AWAITING_SIGNATURES, Agreement.Status.ACTIVE, Agreement.Status.SUSPENDED),
        to=Agreement.Status.TERMINATED, kind=GovernanceEvent.Kind.AGREEMENT_TERMINATED, reason=reason,
    )


@transaction.atomic
def agreement_assign_auditor(*, actor, agreement: Agreement, auditor) -> Agreement:
    """Add an auditor. The auditors are signed terms: in a draft the list just grows; out of
    draft it is an amendment, a new version every party signs again before it is active (and
    before the auditor's access is agreed)."""
    require_administrator(actor, what="agreement", action="assign auditors to")
    if not auditor.groups.filter(name=AUDITORS_GROUP).exists():
        raise field_error("auditor", f"{auditor.username} is not an auditor.")
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.status == Agreement.Status.DRAFT:
        agreement.auditors.add(auditor)
        message = f"{auditor.username} audits '{agreement.title}'."
    else:
        agreement = agreement_amend(actor=actor, agreement=agreement, auditors=[*agreement.auditors.all(), auditor])
        message = f"{auditor.username} audits '{agreement.title}' from v{agreement.version}, once every party signs it."
    event_record(kind=GovernanceEvent.Kind.AUDITOR_ASSIGNED, message=message, actor=actor, agreement=agreement)
    return agreement


@transaction.atomic
def party_give_exit_notice(*, actor, agreement: Agreement, organisation: Organisation) -> AgreementParty:
    """A party announces it leaves. From now on it takes part in no new round; after the
    notice period it is exited. Its history (signatures, ledger, rounds) stays."""
    require_representative(actor, organisation=organisation, agreement=agreement, action="give exit notice")
    try:
        party = AgreementParty.objects.select_for_update().get(agreement=agreement, organisation=organisation)
    except AgreementParty.DoesNotExist:
        raise ValidationFailed(MSG_NOT_A_PARTY.format(organisation=organisation.name, title=agreement.title)) from None
    if party.status != AgreementParty.Status.ACTIVE:
        raise InvalidState(MSG_EXIT_TWICE.format(organisation=organisation.name, title=agreement.title, effective=party.exit_effective_at))
    now = timezone.now()
    party.notice_given_at = now
    party.notice_given_by = actor
    party.exit_effective_at = now + timedelta(days=agreement.exit_notice_days)
    party.status = AgreementParty.Status.NOTICE if agreement.exit_notice_days else AgreementParty.Status.EXITED
    party.save()
    event_record(
        kind=GovernanceEvent.Kind.EXIT_NOTICE,
        message=f"{organisation.name} gave exit notice from '{agreement.title}'; effective {party.exit_effective_at:%Y-%m-%d %H:%M} UTC.",
        actor=actor,
        agreement=agreement,
        organisation=organisation,
        details={"exit_effective_at": party.exit_effective_at.isoformat()},
    )
    if party.status == AgreementParty.Status.EXITED:
        _record_exit(party)
    return party


def _record_exit(party: AgreementParty) -> None:
    event_record(
        kind=GovernanceEvent.Kind.PARTY_EXITED,
        message=f"{party.organisation.name} has exited '{party.agreement.title}'.",
        agreement=party.agreement,
        organisation=party.organisation,
    )


@transaction.atomic
def agreements_apply_due_changes(*, now=None) -> dict:
    """Sweep (Celery beat): notice periods that ran out become exits, agreements past their
    end date expire. Idempotent: each row moves once, under its lock."""
    now = now or timezone.now()
    exited = 0
    for party in AgreementParty.objects.select_for_update().filter(
        status=AgreementParty.Status.NOTICE, exit_effective_at__lte=now
    ).select_related("organisation", "agreement"):
        party.status = AgreementParty.Status.EXITED
        party.save(update_fields=["status"])
        _record_exit(party)
        exited += 1
    expired = 0
    for agreement in Agreement.objects.select_for_update().filter(
        status__in=(Agreement.Status.ACTIVE, Agreement.Status.SUSPENDED, Agreement.Status.AWAITING_SIGNATURES),
        valid_until__lt=now.date(),
    ):
        agreement.status = Agreement.Status.EXPIRED
        agreement.save(update_fields=["status"])
        event_record(
            kind=GovernanceEvent.Kind.AGREEMENT_EXPIRED,
            message=f"'{agreement.title}' expired on {agreement.valid_until:%Y-%m-%d}.",
            agreement=agreement,
        )
        expired += 1
    return {"exited": exited, "expired": expired}
