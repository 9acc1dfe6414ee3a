"""Agreements: what a user sees of them, their parties and signatures."""

from __future__ import annotations

from django.db.models import Count, Prefetch, QuerySet

from fedgov.errors import NotFound

from .. import access
from ..models import Agreement, AgreementParty, AgreementSignature, Membership, TrainingRound
from .common import get_visible

CLOSED = (Agreement.Status.TERMINATED, Agreement.Status.EXPIRED)


def agreement_for(*, user, pk: int) -> Agreement:
    return get_visible(access.visible_agreements(user), what="Agreement", pk=pk)


def agreement_list_for(*, user, status: str | None = None) -> QuerySet[Agreement]:
    """The web UI's list: what `user` sees, with each agreement's number of parties."""
    qs = access.visible_agreements(user)
    if status:
        qs = qs.filter(status=status)
    return qs.annotate(n_parties=Count("party_links", distinct=True))


def agreements_for(*, user) -> QuerySet[Agreement]:
    """The API's agreements: what `user` sees, with parties, signatures and auditors
    prefetched (one query each for a whole page)."""
    return access.visible_agreements(user).prefetch_related(
        Prefetch("party_links", queryset=AgreementParty.objects.select_related("organisation").order_by("organisation__slug")),
        Prefetch("signatures", queryset=AgreementSignature.objects.select_related("organisation", "signed_by")),
        "auditors",
    )


def open_agreements() -> QuerySet[Agreement]:
    """Agreements that are neither terminated nor expired (what a plan may be defined under)."""
    return Agreement.objects.exclude(status__in=CLOSED)


def agreements_of(*, user, organisation) -> QuerySet[Agreement]:
    """The agreements `user` sees that `organisation` is a party to."""
    return access.visible_agreements(user).filter(parties=organisation)


def agreement_parties(*, agreement: Agreement) -> list[dict]:
    """Each party with its signature of the current version and its exit status."""
    signatures = {
        s.organisation_id: s
        for s in AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).select_related("signed_by")
    }
    rows = []
    for link in AgreementParty.objects.filter(agreement=agreement).select_related("organisation").order_by("organisation__name"):
        rows.append(
            {
                "organisation": link.organisation,
                "link": link,
                "status": link.effective_status(),
                "signature": signatures.get(link.organisation_id),
            }
        )
    return rows


def awaiting_signature(*, agreement: Agreement) -> list:
    """Parties that have not yet signed the current version."""
    return [
        row["organisation"]
        for row in agreement_parties(agreement=agreement)
        if row["signature"] is None and row["status"] != "exited"
    ]


def agreements_to_sign(*, user) -> list[tuple]:
    """(agreement, organisation): agreements awaiting signature from an organisation this user
    represents."""
    orgs = access.organisations_of(user, Membership.Role.REPRESENTATIVE)
    pending = []
    for agreement in Agreement.objects.filter(status=Agreement.Status.AWAITING_SIGNATURES, parties__in=orgs).distinct():
        signed = set(
            AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).values_list(
                "organisation_id", flat=True
            )
        )
        for org in agreement.parties.filter(pk__in=orgs).exclude(pk__in=signed):
            pending.append((agreement, org))
    return pending


def party_of(*, agreement: Agreement, slug: str):
    """The party organisation `slug` of `agreement`, or NotFound."""
    org = agreement.parties.filter(slug=slug).first()
    if org is None:
        raise NotFound("Organisation not found among this agreement's parties.")
    return org


def party_link(*, agreement: Agreement, organisation) -> AgreementParty:
    return AgreementParty.objects.get(agreement=agreement, organisation=organisation)


def signature_of(*, agreement: Agreement, organisation) -> AgreementSignature | None:
    """`organisation`'s signature of the agreement's current version, if it signed it."""
    return agreement.signatures.filter(organisation=organisation, version=agreement.version).first()


def agreement_overview(*, user, agreement: Agreement) -> dict:
    """The agreement page: parties and signatures, auditors, datasets, plans, which of the
    user's organisations may still sign or give exit notice, and the latest history when the
    user reads it (`access.may_read_history`)."""
    from .events import events_for

    my_orgs = list(access.representative_parties(user, agreement))
    parties = agreement_parties(agreement=agreement)
    can_sign = []
    can_exit = []
    if agreement.status == Agreement.Status.AWAITING_SIGNATURES:
        signed = {row["organisation"].pk for row in parties if row["signature"]}
        can_sign = [o for o in my_orgs if o.pk not in signed]
    if agreement.status not in CLOSED:
        active = {row["organisation"].pk for row in parties if row["status"] == AgreementParty.Status.ACTIVE}
        can_exit = [o for o in my_orgs if o.pk in active]
    can_see_history = access.may_read_history(user, agreement)
    return {
        "agreement": agreement,
        "parties": parties,
        "auditors": agreement.auditors.order_by("username"),
        "datasets": agreement.datasets.select_related("organisation"),
        "plans": agreement.plans.all(),
        "can_sign": can_sign,
        "can_exit": can_exit,
        "can_see_history": can_see_history,
        "events": events_for(user=user, agreement=agreement)[:10] if can_see_history else [],
    }


def agreement_report_rows(*, agreement: Agreement) -> dict:
    """What an agreement's privacy report lists beside the datasets: parties, every signature
    of every version, and the rounds of its plans."""
    return {
        "datasets": list(agreement.datasets.select_related("organisation").order_by("organisation__name", "slug")),
        "parties": AgreementParty.objects.filter(agreement=agreement)
        .select_related("organisation")
        .order_by("organisation__name"),
        "signatures": AgreementSignature.objects.filter(agreement=agreement)
        .select_related("organisation", "signed_by")
        .order_by("version", "signed_at"),
        "rounds": TrainingRound.objects.filter(plan__agreement=agreement)
        .select_related("plan")
        .prefetch_related("participants")
        .order_by("plan__name", "number"),
    }


def party_datasets(*, agreement: Agreement, organisation):
    """The datasets `organisation` registered under `agreement`."""
    return agreement.datasets.filter(organisation=organisation)


def require_history_of(*, user, pk: int) -> None:
    """An agreement named in a history filter: 404 if `user` cannot see it, 403 if they see it
    but not its history (`access.require_history_reader`)."""
    access.require_history_reader(user, agreement_for(user=user, pk=pk))
