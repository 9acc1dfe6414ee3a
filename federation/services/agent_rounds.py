"""What a partner agent is asked and sends for a round: its tasks, protocol messages,
refusals and receipts. A refused message changes nothing and does not disturb the round for
the others; the secure-aggregation checks are services/protocol.py's, and when nobody else is
awaited the phase's close is enqueued at once (services/enqueue.py)."""

from __future__ import annotations

import logging
import threading

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from fedgov.errors import ApplicationError, NotFound, ValidationFailed

from ..agent import trust
from ..i18n import in_english
from ..models import ModelVersion, Organisation, ProtocolRelay, RoundParticipant, RoundProtocol, RoundTicket, TrainingRound
from . import enqueue
from .agents import agent_organisation, agent_seen
from .protocol import (
    ADVERTISE,
    AGENT_PHASES,
    EVALUATE,
    Next,
    pending,
    protocol_accept,
    protocol_all_declined,
    secagg_round_id,
)
from .tickets import ticket_for

logger = logging.getLogger(__name__)
Status = TrainingRound.Status


class PhaseClosed(ApplicationError):
    code = "phase_closed"
    http_status = 409


def _task_payload(round: TrainingRound, protocol: RoundProtocol, slug: str) -> dict:
    plan, phase, cfg = round.plan, round.phase, protocol.config
    # Only the model's name and hash: a poll never loads its 4d bytes (agent_model serves them).
    if phase == ADVERTISE:
        model = plan.model_versions.only("version", "sha256").get(version=cfg["model_version"])
        dataset = round.participants.get(slug=cfg["datasets"][slug])
        return {
            "config": {"round_id": secagg_round_id(round), "roster": cfg["roster"], "threshold": cfg["threshold"], "vector_length": cfg["vector_length"]},
            "identity_keys": cfg["identity_keys"],
            "plan": {
                "id": plan.pk,
                "agreement": plan.agreement_id,
                "name": plan.name,
                "purpose": plan.purpose,
                "model_spec": plan.model_spec,
                "learning_rate": plan.learning_rate,
                "momentum": plan.momentum,
                "dp": plan.dp_params_for(dataset),
                "delta": dataset.delta,
                "weight": cfg["weights"][slug],
                "quant": cfg["quant"],
            },
            "dataset": {"slug": dataset.slug, "record_count": dataset.record_count, "schema": dataset.schema()},
            # The parameters are fetched as raw bytes from `url` (agent_model): 4 bytes a
            # parameter, where base64 inside this JSON cost 5.33 and a JSON parse of it.
            "model": _model_ref(round, model),
            # What the agent runs (federation/agent/trust.py); the plan fields above are what the
            # plan says now, which the agent compares with the ticket.
            "ticket": ticket_for(round, dataset),
        }
    if phase == EVALUATE:
        model = plan.model_versions.only("version", "sha256").get(round=round)
        return {
            "eval_noise_multiplier": plan.eval_noise_multiplier,
            "dataset": cfg["datasets"][slug],
            "model": _model_ref(round, model),
        }
    # This recipient's relay, or the one for everyone: O(n) bytes, never the other recipients'.
    relays = dict(ProtocolRelay.objects.filter(round=round, phase=phase, party__in=(slug, ProtocolRelay.EVERYONE)).values_list("party", "body"))
    return {"relay": relays.get(slug) or relays.get(ProtocolRelay.EVERYONE)}


def _model_ref(round: TrainingRound, model: ModelVersion) -> dict:
    return {"version": model.version, "sha256": model.sha256, "url": f"rounds/{round.pk}/model/{model.version}/"}


def agent_model(*, user, round_id: int, version: int) -> bytes:
    """The raw float32 parameters of a model a live round hands this agent's organisation:
    the round's start model, or the model it produced (for the evaluation). Anything else,
    or a round the organisation is not active in, is not found."""
    organisation = agent_organisation(user)
    round = (
        TrainingRound.objects.filter(
            pk=round_id, status__in=(Status.RUNNING, Status.AGGREGATING),
            participant_links__dataset__organisation=organisation, participant_links__status=RoundParticipant.Status.ACTIVE,
        )
        .select_related("protocol")
        .defer("protocol__state", "protocol__running_sum")
        .first()
    )
    protocol = getattr(round, "protocol", None) if round is not None else None
    if protocol is None:
        raise NotFound("Round not found.")
    model = (
        ModelVersion.objects.filter(plan_id=round.plan_id, version=version)
        .filter(Q(version=protocol.config.get("model_version")) | Q(round=round))
        .values_list("pk", "sha256")
        .first()
    )
    if model is None:
        raise NotFound("This round hands out no such model.")
    return _model_bytes(*model)


# The last models handed out, shared by every request of this process: when all n partners
# fetch the round's model at once, the process holds it once, not n times.
_MODEL_BYTES: dict[tuple[int, str], bytes] = {}
_MODEL_BYTES_LOCK = threading.Lock()
MODEL_BYTES_KEPT = 2  # a round's start model and the model it produced


def _model_bytes(pk: int, sha256: str) -> bytes:
    with _MODEL_BYTES_LOCK:
        raw = _MODEL_BYTES.get((pk, sha256))
        if raw is None:
            raw = bytes(ModelVersion.objects.filter(pk=pk).values_list("params", flat=True).get())
            _MODEL_BYTES[(pk, sha256)] = raw
            while len(_MODEL_BYTES) > MODEL_BYTES_KEPT:
                del _MODEL_BYTES[next(iter(_MODEL_BYTES))]
        return raw


def agent_tasks(*, user) -> list[dict]:
    """What this agent's organisation owes now: one entry per live round whose current
    phase still waits for it. An empty list means: nothing to do, poll again later."""
    organisation = agent_organisation(user)
    tasks = []
    rounds = (
        TrainingRound.objects.filter(
            status__in=(Status.RUNNING, Status.AGGREGATING),
            participant_links__dataset__organisation=organisation,
            participant_links__status=RoundParticipant.Status.ACTIVE,
            phase__in=AGENT_PHASES,
        )
        .select_related("plan", "protocol")
        .defer("protocol__state", "protocol__running_sum")
        .distinct()
    )
    for round in rounds:
        protocol = getattr(round, "protocol", None)
        if protocol is None or organisation.slug not in pending(round, protocol):
            continue
        tasks.append(
            {
                "round": round.pk,
                "round_id": secagg_round_id(round),
                "phase": round.phase,
                "deadline": round.phase_deadline.isoformat() if round.phase_deadline else None,
                "payload": _task_payload(round, protocol, organisation.slug),
            }
        )
    return tasks


def agent_rounds_taking_part(*, user) -> list[int]:
    """Ids of the live rounds that may still ask something of this agent's organisation
    (running or aggregating, its link active). A round the agent holds work for and that is
    not listed asks nothing more of it: if its masked input never left, the agent releases
    its own reservation (docs/PARTNER-LEDGER.md)."""
    organisation = agent_organisation(user)
    return sorted(
        TrainingRound.objects.filter(
            status__in=(Status.RUNNING, Status.AGGREGATING),
            participant_links__dataset__organisation=organisation,
            participant_links__status=RoundParticipant.Status.ACTIVE,
        )
        .values_list("pk", flat=True)
        .distinct()
    )


def agent_submit(*, user, round_id: int, phase: str, body: bytes) -> dict:
    """Take one partner message for the round's current phase. A refused message changes
    nothing and does not disturb the round for the others."""
    organisation = agent_organisation(user)
    agent_seen(organisation=organisation)
    if phase not in AGENT_PHASES:
        raise NotFound(f"Unknown phase {phase!r}.")
    with transaction.atomic():
        round = TrainingRound.objects.select_for_update().select_related("plan").filter(pk=round_id).first()
        link = None
        if round is not None:
            link = round.participant_links.select_related("dataset__organisation").filter(dataset__organisation=organisation).first()
        if round is None or link is None:
            raise NotFound("Round not found.")
        if round.status not in (Status.RUNNING, Status.AGGREGATING) or round.phase != phase:
            raise PhaseClosed(
                f"Round {round.number} is {in_english(round.get_status_display()).lower()}"
                + (f" in phase {round.phase}" if round.phase else "")
                + f"; a {phase} message is out of turn.",
                phase=round.phase,
            )
        if link.status != RoundParticipant.Status.ACTIVE:
            raise PhaseClosed(f"{organisation.name} dropped out of round {round.number}.")
        outcome = protocol_accept(round=round, link=link, phase=phase, body=body)
        if outcome.next is Next.PHASE_DONE:
            enqueue.after_commit(enqueue.PHASE_CLOSE, round.pk, phase)
    return outcome.result


class ReceiptRejected(ApplicationError):
    """A partner's receipt does not check out (bad signature, another ticket or event)."""

    code = "receipt_rejected"
    http_status = 400


class ReceiptConflict(ApplicationError):
    code = "receipt_conflict"
    http_status = 409


REFUSAL_CODE_MAX = 64
REFUSAL_REASON_MAX = 2000


def _agent_link(organisation: Organisation, round_id: int, *, lock: bool) -> tuple[TrainingRound, RoundParticipant]:
    rounds = TrainingRound.objects.select_related("plan")
    round = (rounds.select_for_update() if lock else rounds).filter(pk=round_id).first()
    link = None
    if round is not None:
        link = round.participant_links.select_related("dataset__organisation").filter(dataset__organisation=organisation).first()
    if round is None or link is None:
        raise NotFound("Round not found.")
    return round, link


def agent_refuse(*, user, round_id: int, code: str, reason: str) -> dict:
    """The partner's agent declines the round (its checks failed: an unsigned or mismatched
    ticket, parameters outside the terms, its local budget). Stored on the participant with
    the agent's code and words, so the round page and API say why; the participant leaves the
    round, and when nobody the phase waits for is left, the phase closes at once."""
    organisation = agent_organisation(user)
    agent_seen(organisation=organisation)
    code, reason = (code or "").strip(), (reason or "").strip()
    if not code or len(code) > REFUSAL_CODE_MAX or not all(c.isascii() and (c.isalnum() or c == "_") for c in code):
        raise ValidationFailed(
            f"code must be 1-{REFUSAL_CODE_MAX} letters, digits or underscores.", fields={"code": ["Invalid refusal code."]}
        )
    if not reason or len(reason) > REFUSAL_REASON_MAX:
        raise ValidationFailed(
            f"reason must be 1-{REFUSAL_REASON_MAX} characters.", fields={"reason": ["Give the reason in at most 2000 characters."]}
        )
    with transaction.atomic():
        round, link = _agent_link(organisation, round_id, lock=True)
        if link.refusal_code:
            return {"accepted": True, "code": link.refusal_code}  # told us already (a retried POST)
        if round.status not in (Status.RUNNING, Status.AGGREGATING):
            raise PhaseClosed(f"Round {round.number} is {in_english(round.get_status_display()).lower()}; there is nothing to decline.")
        phase = round.phase
        link.refusal_code, link.refusal_reason, link.refused_at = code, reason, timezone.now()
        # It sent its update already when it declines to evaluate: it finished, without evaluating.
        link.status = RoundParticipant.Status.FINISHED if phase == EVALUATE else RoundParticipant.Status.DROPPED
        link.save(update_fields=["refusal_code", "refusal_reason", "refused_at", "status"])
        round.metrics = {
            **round.metrics,
            "refusals": {**round.metrics.get("refusals", {}), organisation.slug: {"code": code, "reason": reason, "phase": phase}},
        }
        round.save(update_fields=["metrics"])
        logger.warning("round %s: %s declined in %s: %s: %s", round.pk, organisation.slug, phase, code, reason)
        if protocol_all_declined(round):
            enqueue.after_commit(enqueue.PHASE_CLOSE, round.pk, phase)
    return {"accepted": True, "code": code}


def agent_receipt(*, user, round_id: int, body: bytes) -> dict:
    """Check the partner's signed receipt for the round against its ticket, its enrolled
    identity key and the RESERVE's event, and store it beside the ticket (write once)."""
    import json

    organisation = agent_organisation(user)
    agent_seen(organisation=organisation)
    try:
        receipt = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ReceiptRejected("The receipt is not JSON.", receipt_code="receipt_malformed") from None
    with transaction.atomic():
        round, link = _agent_link(organisation, round_id, lock=True)
        ticket = RoundTicket.objects.filter(participant=link).first()
        protocol = RoundProtocol.objects.filter(round=round).only("config").first()
        enrolled = (protocol.config.get("identity_keys") or {}).get(organisation.slug) if protocol else None
        if ticket is None or enrolled is None:
            raise NotFound(f"{organisation.name} holds no ticket for round {round.number}.")
        try:
            trust.receipt_verify(receipt, bytes.fromhex(enrolled))
        except trust.TrustError as exc:
            raise ReceiptRejected(str(exc), receipt_code=exc.code) from None
        from accounting.dp_events import canonical_json

        expected = {
            "round": round.pk,
            "dataset": ticket.document["dataset"],
            "ticket_hash": ticket.ticket_hash,
            "event": canonical_json(ticket.document["event"]),
        }
        got = {**receipt, "event": canonical_json(receipt["event"]) if isinstance(receipt["event"], dict) else receipt["event"]}
        wrong = [name for name, value in expected.items() if got[name] != value]
        if wrong:
            raise ReceiptRejected(f"The receipt does not match the round's ticket: {', '.join(wrong)} differ.", receipt_code="receipt_mismatch")
        if ticket.receipt is not None:
            if ticket.receipt == receipt:
                return {"accepted": True}
            raise ReceiptConflict("A different receipt for this round is already stored.")
        # Beside the ledger too, in the dataset's receipt chain that audit bundles carry
        # (ARCHITECTURE.md, Trust 3): checked again there against the RESERVE's event.
        from accounting.services.receipts import receipt_record

        receipt_record(receipt=receipt, organisation=organisation, public_key=enrolled)
        ticket.receipt, ticket.receipt_at = receipt, timezone.now()
        ticket.save(update_fields=["receipt", "receipt_at"])
        missing = round.metrics.get("receipts_missing")
        if missing and organisation.slug in missing:  # arrived after the round was flagged
            round.metrics = {**round.metrics, "receipts_missing": [s for s in missing if s != organisation.slug]}
            round.save(update_fields=["metrics"])
    return {"accepted": True}
