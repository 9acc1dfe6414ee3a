"""Partner agents the coordinator can see: enrolment, last poll, software, terms held, refusals.

An agent enrols its Ed25519 identity key (`agent_enrol`), and every poll (`agent_poll`) records
that it is alive and hands it the terms of its organisation's active agreements. What it is
asked and sends for a round lives in services/agent_rounds.py.

An agent is *online* when it polled within `FEDGOV_AGENT_ONLINE_SECONDS` (twice the longest
long-poll wait and a margin). The poll is the hot path (every partner, every few seconds, and
bench/rounds.py measures its overhead), so the last poll is written at most every
`seen_every()` per agent, and the terms only when the agreements it holds change.

A round starts with the partners whose agents are online (`round_roster_choose`, called by
round_start before the budget is reserved): an offline partner is left out, nothing is reserved
on its dataset and the round says why, as long as the agreement's minimum and the
secure-aggregation threshold still hold; otherwise the round is blocked, saying so. A partner
long offline is thus not waited for, phase after phase, round after round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from fedgov.errors import PermissionDenied, ValidationFailed

from ..models import AgentIdentity, AgentStatus, GovernanceEvent, Membership, Organisation, RoundParticipant, TrainingRound
from .common import event_record

SEEN_EVERY = timedelta(seconds=5)  # at most; a quarter of a shorter online window
VERSION_MAX = 64
_USER_AGENT = re.compile(r"^fedgov-agent/([A-Za-z0-9][A-Za-z0-9.+_-]{0,63})(?:\s|$)")  # at most VERSION_MAX characters

MSG_LEFT_OUT_OFFLINE = "agent offline since {since:%Y-%m-%d %H:%M:%S} UTC"
MSG_LEFT_OUT_NEVER_POLLED = "agent has never polled"
MSG_LEFT_OUT_NOT_ENROLLED = "no agent enrolled"
MSG_TOO_FEW_ONLINE = "Only {n} of {total} participants have an agent online ({who}); {rule}."
MSG_RULE_MINIMUM = "the agreement requires at least {minimum}"
MSG_RULE_THRESHOLD = "secure aggregation needs {threshold}"

# What an agent's refusal code means, in plain words (federation/agent/checks.py's codes).
# English here and in the API; marked so the pages show them translated (fedgov_ui.refusal_words).
REFUSAL_WORDS = {
    "agreement_unknown": gettext_noop("its agent does not hold this agreement's terms (was the agreement signed after the agent last learned its terms?)"),
    "terms_mismatch": gettext_noop("the round was prepared under another version of the agreement's terms than the one its agent holds"),
    "outside_terms": gettext_noop("the plan's privacy parameters are outside the agreement's terms"),
    "eval_noise_too_low": gettext_noop("the evaluation noise is below the agreement's floor"),
    "epsilon_over_ceiling": gettext_noop("the round would spend more privacy budget than the partner's own ceiling allows"),
    "ticket_unsigned": gettext_noop("the round ticket is not signed"),
    "ticket_signature": gettext_noop("the round ticket is not signed by the coordinator key its agent trusts"),
    "ticket_malformed": gettext_noop("the round ticket is malformed"),
    "ticket_mismatch": gettext_noop("what the coordinator asked differs from the signed round ticket"),
    "round_already_run": gettext_noop("its agent already ran this round"),
}


def online_window() -> timedelta:
    return timedelta(seconds=settings.FEDGOV_AGENT_ONLINE_SECONDS)


def seen_every() -> timedelta:
    return min(SEEN_EVERY, online_window() / 4)


def agent_version(user_agent: str | None) -> str:
    """The agent software's version from its `User-Agent: fedgov-agent/<version>`, or ''."""
    match = _USER_AGENT.match(user_agent or "")
    return match.group(1) if match else ""


def is_online(status: AgentStatus | None, now: datetime | None = None) -> bool:
    if status is None or status.last_seen_at is None:
        return False
    return status.last_seen_at >= (now or timezone.now()) - online_window()


def refusal_words(code: str) -> str:
    return REFUSAL_WORDS.get(code, "")


# --- writes -----------------------------------------------------------------------------------


def agent_status_enrolled(*, organisation: Organisation, identity: AgentIdentity, now: datetime | None = None) -> AgentStatus:
    """The agent enrolled (or started again with its key): it is online from now."""
    now = now or timezone.now()
    status, _ = AgentStatus.objects.update_or_create(
        organisation=organisation, defaults={"enrolled_at": identity.enrolled_at, "last_seen_at": now}
    )
    return status


def agent_poll_record(*, organisation: Organisation, version: str, terms: list[dict], now: datetime | None = None) -> None:
    """The agent polled, running `version`, and was handed `terms`. At most one UPDATE, and
    none when its last poll is recent and nothing else changed. Two polls racing both write
    the same kind of values; the later wins, which is what "last poll" means."""
    now = now or timezone.now()
    held = {str(t["agreement"]): t["terms_hash"] for t in terms}
    status = AgentStatus.objects.filter(organisation=organisation).first()
    if status is None:  # an agent polling without having enrolled since the status table came
        try:
            with transaction.atomic():
                AgentStatus.objects.create(
                    organisation=organisation, last_seen_at=now, software_version=version[:VERSION_MAX], terms_held=held, terms_updated_at=now
                )
            return
        except IntegrityError:  # a concurrent poll created it
            status = AgentStatus.objects.get(organisation=organisation)
    changes: dict = {}
    if status.last_seen_at is None or status.last_seen_at < now - seen_every():
        changes["last_seen_at"] = now
    if version and status.software_version != version:
        changes["software_version"] = version[:VERSION_MAX]
    if status.terms_held != held:
        changes["terms_held"], changes["terms_updated_at"] = held, now
    if changes:
        AgentStatus.objects.filter(pk=status.pk).update(**changes)


def agent_seen(*, organisation: Organisation, now: datetime | None = None) -> None:
    """The agent sent a message (a long computation can keep it from polling for a while):
    it is alive. One conditional UPDATE that matches nothing when its last poll is recent."""
    now = now or timezone.now()
    AgentStatus.objects.filter(organisation=organisation, last_seen_at__lt=now - seen_every()).update(last_seen_at=now)


def round_roster_choose(*, round: TrainingRound, now: datetime | None = None) -> str:
    """Before the budget is reserved (round_start, under the round's lock): leave out the
    participants whose organisation's agent is offline or not enrolled, recording why in
    round.metrics["left_out"], when those left still meet the agreement's minimum and the
    secure-aggregation threshold. Returns '' when the round can go on, or why it cannot (then
    nothing is left out)."""
    now = now or timezone.now()
    links = list(
        round.participant_links.exclude(status=RoundParticipant.Status.LEFT_OUT).select_related("dataset__organisation").order_by("dataset_id")
    )
    org_ids = {link.dataset.organisation_id for link in links}
    statuses = {s.organisation_id: s for s in AgentStatus.objects.filter(organisation_id__in=org_ids)}
    enrolled = set(AgentIdentity.objects.filter(organisation_id__in=org_ids, revoked_at__isnull=True).values_list("organisation_id", flat=True))
    out: dict[int, str] = {}
    for link in links:
        org_id = link.dataset.organisation_id
        status = statuses.get(org_id)
        if org_id not in enrolled:
            out[link.pk] = MSG_LEFT_OUT_NOT_ENROLLED
        elif not is_online(status, now):
            out[link.pk] = MSG_LEFT_OUT_OFFLINE.format(since=status.last_seen_at) if status and status.last_seen_at else MSG_LEFT_OUT_NEVER_POLLED
    if not out:
        return ""
    plan = round.plan
    n, total = len(links) - len(out), len(links)
    minimum = plan.agreement.min_participants
    who = "; ".join(f"{link.dataset.organisation.slug}: {out[link.pk]}" for link in links if link.pk in out)
    if n < max(minimum, 2):
        return MSG_TOO_FEW_ONLINE.format(n=n, total=total, who=who, rule=MSG_RULE_MINIMUM.format(minimum=max(minimum, 2)))
    if plan.secagg_threshold and n < plan.secagg_threshold:
        return MSG_TOO_FEW_ONLINE.format(n=n, total=total, who=who, rule=MSG_RULE_THRESHOLD.format(threshold=plan.secagg_threshold))
    RoundParticipant.objects.filter(pk__in=out).update(status=RoundParticipant.Status.LEFT_OUT)
    left_out = {
        link.dataset.organisation.slug: {"dataset": link.dataset.slug, "reason": out[link.pk]} for link in links if link.pk in out
    }
    round.metrics = {**(round.metrics or {}), "left_out": {**(round.metrics or {}).get("left_out", {}), **left_out}}
    round.save(update_fields=["metrics"])
    return ""


# --- reads ------------------------------------------------------------------------------------


@dataclass
class AgentView:
    """One organisation's agent as the agents page and API show it."""

    organisation: Organisation
    status: AgentStatus | None
    identity: AgentIdentity | None
    online: bool
    terms: list[dict] = field(default_factory=list)  # held terms, each marked current or not
    refusals: list[RoundParticipant] = field(default_factory=list)

    @property
    def enrolled(self) -> bool:
        return self.identity is not None


def agents_overview(organisations, *, refusals: int | None = 20, now: datetime | None = None) -> list[AgentView]:
    """The agents of `organisations` (already scoped by access.py), with their last refusals
    (all of them when `refusals` is None). A few queries whatever the number of agents."""
    now = now or timezone.now()
    orgs = list(organisations.order_by("name"))
    ids = [o.pk for o in orgs]
    statuses = {s.organisation_id: s for s in AgentStatus.objects.filter(organisation_id__in=ids)}
    identities = {a.organisation_id: a for a in AgentIdentity.objects.filter(organisation_id__in=ids, revoked_at__isnull=True)}
    current = _current_terms(ids)
    refused: dict[int, list] = {}
    rows = (
        RoundParticipant.objects.filter(dataset__organisation_id__in=ids)
        .exclude(refusal_code="")
        .select_related("round__plan", "dataset")
        .order_by("-refused_at", "-pk")
    )
    for row in rows:
        bucket = refused.setdefault(row.dataset.organisation_id, [])
        if refusals is None or len(bucket) < refusals:
            row.refusal_words = refusal_words(row.refusal_code)
            bucket.append(row)
    out = []
    for org in orgs:
        status = statuses.get(org.pk)
        held = (status.terms_held if status else {}) or {}
        terms = [
            {"agreement": int(aid), "terms_hash": h, "current": current.get((org.pk, int(aid))) == h}
            for aid, h in sorted(held.items(), key=lambda kv: int(kv[0]))
        ]
        out.append(AgentView(org, status, identities.get(org.pk), is_online(status, now), terms, refused.get(org.pk, [])))
    return out


def _current_terms(org_ids: list[int]) -> dict[tuple[int, int], str]:
    from ..models import AgreementParty

    rows = AgreementParty.objects.filter(organisation_id__in=org_ids, agreement__status="active").values_list(
        "organisation_id", "agreement_id", "agreement__terms_hash"
    )
    return {(o, a): h for o, a, h in rows}


@dataclass
class PartnersOnline:
    online: list[Organisation]
    offline: list[tuple[Organisation, datetime | None]]

    @property
    def total(self) -> int:
        return len(self.online) + len(self.offline)

    def __str__(self) -> str:
        return f"{len(self.online)} of {self.total} partners online"


def partners_online(round: TrainingRound, now: datetime | None = None) -> PartnersOnline:
    """The round's partners (the organisations of its datasets, left out or not) whose agent
    is online now, and the others with their last poll."""
    now = now or timezone.now()
    orgs = list(Organisation.objects.filter(datasets__round_links__round=round).distinct().order_by("name"))
    statuses = {s.organisation_id: s for s in AgentStatus.objects.filter(organisation__in=orgs)}
    online, offline = [], []
    for org in orgs:
        status = statuses.get(org.pk)
        if is_online(status, now):
            online.append(org)
        else:
            offline.append((org, status.last_seen_at if status else None))
    return PartnersOnline(online, offline)


# --- enrolment and polls -------------------------------------------------------------------


def agent_organisation(user) -> Organisation:
    membership = Membership.objects.filter(user=user, role=Membership.Role.AGENT).select_related("organisation").first()
    if membership is None:
        raise PermissionDenied("This account is not a partner agent of any organisation.")
    return membership.organisation


def agent_enrol(*, user, public_key_hex: str) -> AgentIdentity:
    """Register (or re-register) the agent's Ed25519 identity key for its organisation."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    organisation = agent_organisation(user)
    try:
        raw = bytes.fromhex(public_key_hex or "")
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValidationFailed("public_key must be a raw Ed25519 public key in hex (64 characters).", fields={"public_key": ["Invalid key."]}) from None
    with transaction.atomic():
        current = AgentIdentity.objects.select_for_update().filter(organisation=organisation, revoked_at__isnull=True).first()
        if current and current.public_key == raw.hex():
            agent_status_enrolled(organisation=organisation, identity=current)
            return current
        if current:
            current.revoked_at = timezone.now()
            current.save(update_fields=["revoked_at"])
        identity = AgentIdentity.objects.create(organisation=organisation, user=user, public_key=raw.hex())
        agent_status_enrolled(organisation=organisation, identity=identity)
        event_record(
            kind=GovernanceEvent.Kind.AGENT_ENROLLED,
            message=f"Partner agent of {organisation.name} enrolled key {raw.hex()[:16]}…",
            actor=user,
            organisation=organisation,
        )
    return identity


def agent_terms(organisation: Organisation) -> list[dict]:
    """The DP terms of every active agreement the organisation is party to: what its agent
    enforces on every plan it is asked to run."""
    out = []
    for agreement in organisation.agreements.filter(status="active"):
        out.append(
            {
                "agreement": agreement.pk,
                "title": agreement.title,
                "version": agreement.version,
                "terms_hash": agreement.terms_hash,
                "min_noise_multiplier": agreement.min_noise_multiplier,
                "max_clip_norm": agreement.max_clip_norm,
                "max_delta": agreement.max_delta,
                "max_epsilon_per_round": agreement.max_epsilon_per_round,
            }
        )
    return out


def agent_poll(*, user, user_agent: str = "") -> list[dict]:
    """A poll begins: record that the agent is alive (and its software version), and hand it
    the terms of every active agreement its organisation is party to, so that an agreement
    signed or amended after it enrolled is known on its next poll, without re-enrolling."""
    organisation = agent_organisation(user)
    terms = agent_terms(organisation)
    agent_poll_record(organisation=organisation, version=agent_version(user_agent), terms=terms)
    return terms
