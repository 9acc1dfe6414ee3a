"""Driving a round through secure aggregation, from budget reservation to a new model.

    RUNNING      advertise_keys -> share_keys -> masked_input
    AGGREGATING  unmask_response -> aggregate -> evaluate
    COMPLETED    budget committed; the plan's next round requested (or the plan stops)

Partners reach out (the agent API); the coordinator never connects to them. Each phase
closes when every live partner has answered or at its deadline, whichever comes first: a
partner that misses a deadline is a dropout. Every transition is a compare-and-set on
(round.status, round.phase) under the round's row lock, so a close task delivered twice,
or racing the deadline sweep, moves the round once. The slow work (unmasking, FedAvg) runs
outside the lock and is redone from the stored state if its worker dies.

Storage keeps the work per partner message and per poll O(n): `RoundProtocol.state` is the
server's O(n) state (keys, who answered), each accepted ShareKeys / unmask response is one
`ProtocolMessage` row (read back only by the close that needs them all, once) and each
recipient's relay one `ProtocolRelay` row (a poll reads its own).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import threading
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from fedgov import strictjson
from fedgov.errors import ApplicationError, NotFound, PermissionDenied

from .. import secagg, wakeup
from ..agent import trust
from ..i18n import in_english
from ..learning import (
    QuantSpec,
    apply_update,
    combine_accuracy,
    fedavg_weights,
    init_params,
    secure_average,
)
from ..learning.evaluation import pooled_accuracy_interval
from ..learning.server import ServerOptimizer, server_step, state_from_bytes, state_to_bytes
from ..models import (
    AgentIdentity,
    GovernanceEvent,
    Membership,
    ModelVersion,
    Organisation,
    ProtocolMessage,
    ProtocolRelay,
    RoundParticipant,
    RoundProtocol,
    RoundTicket,
    TrainingPlan,
    TrainingRound,
)
from . import agents
from .common import event_record

logger = logging.getLogger(__name__)
Status = TrainingRound.Status

ADVERTISE = secagg.ADVERTISE_KEYS
SHARE = secagg.SHARE_KEYS
MASKED = secagg.MASKED_INPUT
UNMASK = secagg.UNMASK_RESPONSE
AGGREGATE = "aggregate"
EVALUATE = "evaluate"
AGENT_PHASES = (ADVERTISE, SHARE, MASKED, UNMASK, EVALUATE)
NEXT_PHASE = {ADVERTISE: SHARE, SHARE: MASKED, MASKED: UNMASK}


class ProtocolRejected(ApplicationError):
    """A partner's message was refused (wrong phase, replay, bad signature...): the round
    goes on for the others. `details["secagg_code"]` is the protocol's stable code."""

    code = "protocol_rejected"
    http_status = 400


class PhaseClosed(ApplicationError):
    code = "phase_closed"
    http_status = 409


# --- the model a plan trains ------------------------------------------------------------------


def params_sha256(params: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(params, dtype=np.float32).tobytes()).hexdigest()


def model_store(*, plan: TrainingPlan, version: int, params: np.ndarray, round=None, metrics=None, optimizer_state=None) -> ModelVersion:
    params = np.asarray(params, dtype=np.float32)
    return ModelVersion.objects.create(
        plan=plan, round=round, version=version, params=params.tobytes(), sha256=params_sha256(params), metrics=metrics or {},
        optimizer_state=state_to_bytes(optimizer_state),
    )


def server_apply(plan: TrainingPlan, base: ModelVersion, update: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The plan's server optimiser on the aggregate (post-processing of DP outputs: no privacy
    cost). Plain FedAvg (no server optimiser) is ``base + server_learning_rate * update``;
    otherwise the optimiser's state continues from the one stored with ``base``."""
    params = model_params(base)
    if not plan.server_optimizer:
        return apply_update(params, update, plan.server_learning_rate), None
    opt = ServerOptimizer.from_dict(plan.server_optimizer)
    return server_step(params, update, opt, state_from_bytes(base.optimizer_state))


def model_params(version: ModelVersion) -> np.ndarray:
    return np.frombuffer(bytes(version.params), dtype=np.float32).copy()


def latest_model(plan: TrainingPlan) -> ModelVersion:
    """The plan's current global model; version 0 (seeded from the plan id) if none yet."""
    latest = plan.model_versions.order_by("-version").first()
    if latest is None:
        latest = model_store(plan=plan, version=0, params=init_params(plan.model_spec, seed=plan.pk))
    return latest


def quant_spec(plan: TrainingPlan, n_parties: int) -> QuantSpec:
    """Fixed-point range for a weighted update: K steps of lr times an averaged clipped
    gradient (norm <= C) plus noise; twice that leaves headroom, beyond it is clipped."""
    clip = max(1e-3, 2.0 * plan.learning_rate * plan.local_steps * plan.clip_norm)
    return QuantSpec(clip=clip, n_parties=n_parties)


# --- opening a round --------------------------------------------------------------------------


def _deadline(plan: TrainingPlan):
    return timezone.now() + timedelta(seconds=plan.phase_timeout_seconds)


def _schedule_close(round: TrainingRound, phase: str) -> None:
    """`phase` just opened (under the round lock): after the commit, schedule its deadline
    and wake the agents waiting for work (their long polls re-read their tasks at once)."""
    from .. import tasks

    round_id, countdown = round.pk, round.plan.phase_timeout_seconds
    wakeup.announce_agent_work(round_id)
    transaction.on_commit(lambda: tasks.phase_close_task.apply_async((round_id, phase), countdown=countdown))


def _enqueue_close_now(round: TrainingRound, phase: str) -> None:
    from .. import tasks

    round_id = round.pk
    transaction.on_commit(lambda: tasks.phase_close_task.delay(round_id, phase))


def secagg_round_id(round: TrainingRound) -> str:
    return f"round-{round.pk}"


def round_open_protocol(*, round: TrainingRound) -> TrainingRound:
    """RUNNING round, budget reserved: fix the roster (participants with an enrolled agent,
    less those left out at the start because their agent was offline: services/agents.py),
    the threshold and the global model, and open AdvertiseKeys. Called under the round lock."""
    from .rounds import round_abort

    plan = round.plan
    links = list(
        round.participant_links.exclude(status=RoundParticipant.Status.LEFT_OUT)
        .select_related("dataset__organisation")
        .order_by("dataset__organisation__slug")
    )
    identities = {
        a.organisation_id: a for a in AgentIdentity.objects.filter(organisation__in=[p.dataset.organisation_id for p in links], revoked_at__isnull=True)
    }
    roster, keys = [], {}
    for link in links:
        identity = identities.get(link.dataset.organisation_id)
        if identity is None:
            link.status = RoundParticipant.Status.DROPPED
            link.save(update_fields=["status"])
            continue
        slug = link.dataset.organisation.slug
        roster.append(slug)
        keys[slug] = bytes.fromhex(identity.public_key)
    n = len(roster)
    threshold = max(plan.threshold_for(len(links)), n // 2 + 1, 2)
    if n < 2 or n < threshold:
        return round_abort(
            actor=None,
            round=round,
            reason=f"Only {n} participant(s) have an enrolled agent; secure aggregation needs {threshold}.",
            retryable=True,
        )
    model = latest_model(plan)
    dim = model_params(model).size
    config = secagg.RoundConfig(round_id=secagg_round_id(round), roster=tuple(roster), threshold=threshold, vector_length=dim)
    server = secagg.SecAggServer(config, identity_keys=keys)
    datasets = {link.dataset.organisation.slug: link.dataset for link in links if link.dataset.organisation.slug in roster}
    weights = fedavg_weights({slug: d.record_count for slug, d in datasets.items()})
    protocol, _ = RoundProtocol.objects.update_or_create(
        round=round,
        defaults={
            "config": {
                "roster": list(config.roster),
                "threshold": threshold,
                "vector_length": dim,
                "model_version": model.version,
                "weights": {k: float(v) for k, v in weights.items()},
                "quant": quant_spec(plan, n).to_dict(),
                "datasets": {slug: d.slug for slug, d in datasets.items()},
                "identity_keys": {slug: key.hex() for slug, key in keys.items()},
            },
            "state": server.to_dict(contributions=False),
            "running_sum": None,
            "pending": server.pending(),
        },
    )
    ProtocolMessage.objects.filter(round=round).delete()
    ProtocolRelay.objects.filter(round=round).delete()
    RoundParticipant.objects.filter(round=round, dataset__in=datasets.values()).update(status=RoundParticipant.Status.ACTIVE)
    round_tickets_issue(round=round, links=[link for link in links if link.dataset.organisation.slug in roster], model=model, config=protocol.config)
    round.phase = ADVERTISE
    round.phase_deadline = _deadline(plan)
    round.save(update_fields=["phase", "phase_deadline"])
    _schedule_close(round, ADVERTISE)
    return round


# --- round tickets ----------------------------------------------------------------------------


def ticket_document(*, round: TrainingRound, link: RoundParticipant, reserve, model: ModelVersion, config: dict) -> dict:
    """The unsigned ticket of one participant (federation/agent/trust.py): everything the RESERVE
    charged and the partner runs, as frozen at reservation."""
    import json

    from accounting import ledger
    from accounting.models import iso

    plan, dataset = round.plan, link.dataset
    slug = dataset.organisation.slug
    agreement = plan.agreement
    dp = plan.dp_params_for(dataset)
    return {
        # docs/TRUST-FORMATS.md's fields
        "round": round.pk,  # what the ledger's entries carry for the round
        "dataset": reserve.dataset_slug,  # the chain's name
        "event": json.loads(reserve.event),  # the RESERVE's event, as JSON
        "q": dp["q"],
        "z": dp["z"],
        "K": dp["K"],
        "C": dp["C"],
        "eval_noise": dp["eval_noise_multiplier"],
        "eval_count": dp["eval_count"],
        "records": dataset.record_count,  # what q was computed from
        "model_spec": plan.model_spec,
        "start_model_sha256": model.sha256,
        "agreement_id": agreement.pk,
        "agreement_version": agreement.version,
        "terms_hash": agreement.terms_hash,
        "reserve_entry_hash": reserve.entry_hash,
        # what the partner needs besides
        "v": trust.TICKET_VERSION,
        "round_number": round.number,
        "plan": plan.pk,
        "secagg_round_id": secagg_round_id(round),
        "organisation": slug,
        "model_version": model.version,
        "delta": dataset.delta,
        "accountant": dataset.accountant,
        "learning_rate": plan.learning_rate,
        "momentum": plan.momentum,
        "weight": config["weights"][slug],
        "quant": config["quant"],
        "epsilon_budget": dataset.epsilon_budget,
        "key_id": ledger.key_id(),
        "issued_at": iso(timezone.now()),
    }


def round_tickets_issue(*, round: TrainingRound, links: list[RoundParticipant], model: ModelVersion, config: dict) -> list[RoundTicket]:
    """Freeze and sign one ticket per participant, in the transaction that reserved the budget
    (round_start -> round_open_protocol). A participant already holding one keeps it."""
    from accounting import ledger
    from accounting.models import LedgerEntry

    reserves = {e.dataset_id: e for e in LedgerEntry.objects.filter(round_id=round.pk, kind="RESERVE")}
    held = set(RoundTicket.objects.filter(participant__in=links).values_list("participant_id", flat=True))
    key = ledger.signing_key()
    out = []
    for link in links:
        if link.pk in held:
            continue
        reserve = reserves.get(link.dataset_id)
        if reserve is None:  # budget_reserve wrote one per dataset: never without one
            raise ApplicationError(f"Round {round.number} has no reservation on {link.dataset.slug}; no ticket can be issued.")
        ticket = trust.ticket_sign(ticket_document(round=round, link=link, reserve=reserve, model=model, config=config), key)
        out.append(
            RoundTicket.objects.create(
                participant=link,
                document={k: v for k, v in ticket.items() if k != "signature"},
                signature=ticket["signature"],
                ticket_hash=trust.ticket_hash(ticket),
                key_id=ticket["key_id"],
            )
        )
    return out


def ticket_signed(ticket: RoundTicket) -> dict:
    return {**ticket.document, "signature": ticket.signature}


def round_ticket_hashes(round: TrainingRound) -> dict[int, str]:
    """{dataset id: ticket hash} of the round, for the COMMIT entries that name them."""
    return dict(RoundTicket.objects.filter(participant__round=round).values_list("participant__dataset_id", "ticket_hash"))


# --- what an agent sees and sends -------------------------------------------------------------


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
        from fedgov.errors import ValidationFailed

        raise ValidationFailed("public_key must be a raw Ed25519 public key in hex (64 characters).", fields={"public_key": ["Invalid key."]}) from None
    with transaction.atomic():
        current = AgentIdentity.objects.select_for_update().filter(organisation=organisation, revoked_at__isnull=True).first()
        if current and current.public_key == raw.hex():
            agents.agent_status_enrolled(organisation=organisation, identity=current)
            return current
        if current:
            current.revoked_at = timezone.now()
            current.save(update_fields=["revoked_at"])
        identity = AgentIdentity.objects.create(organisation=organisation, user=user, public_key=raw.hex())
        agents.agent_status_enrolled(organisation=organisation, identity=identity)
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
    agents.agent_poll_record(organisation=organisation, version=agents.agent_version(user_agent), terms=terms)
    return terms


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
            "ticket": _ticket_for(round, dataset),
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
# fetch the round's model at once, the process holds it once, not n times (issue #19).
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


def _ticket_for(round: TrainingRound, dataset) -> dict | None:
    ticket = RoundTicket.objects.filter(participant__round=round, participant__dataset=dataset).first()
    return ticket_signed(ticket) if ticket is not None else None


def _server(protocol: RoundProtocol) -> secagg.SecAggServer:
    """The server from its O(n) state: it validates messages but holds no contribution."""
    return secagg.SecAggServer.from_dict(protocol.state, running_sum=bytes(protocol.running_sum) if protocol.running_sum is not None else None)


def _restore_contributions(round: TrainingRound, server: secagg.SecAggServer) -> None:
    """Hand the server its current phase's contributions (all of them, once) before it
    closes ShareKeys or finalizes."""
    rows = ProtocolMessage.objects.filter(round=round, phase=server.phase).values_list("party", "data")
    server.restore_contributions(dict(rows))


def _relays_replace(round: TrainingRound, phase: str, relays: dict[str, bytes]) -> None:
    """The relays handed out during `phase` (the one opening) replace the previous phase's."""
    ProtocolRelay.objects.filter(round=round).delete()
    ProtocolRelay.objects.bulk_create(ProtocolRelay(round=round, phase=phase, party=party, body=_b64(body)) for party, body in relays.items())


def _pending(round: TrainingRound, protocol: RoundProtocol, server=None) -> list[str]:
    if round.phase == EVALUATE:
        return sorted(
            link.dataset.organisation.slug
            for link in round.participant_links.select_related("dataset__organisation")
            if link.status == RoundParticipant.Status.ACTIVE and "evaluation" not in link.metrics
        )
    if round.phase in (ADVERTISE, SHARE, MASKED, UNMASK):
        # Stored at every change, so polling agents never deserialise the protocol state.
        return server.pending() if server is not None else list(protocol.pending)
    return []


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
        if protocol is None or organisation.slug not in _pending(round, protocol):
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
    agents.agent_seen(organisation=organisation)
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
        protocol = RoundProtocol.objects.get(round=round)
        if phase == EVALUATE:
            result = _receive_evaluation(round, link, body)
        else:
            # The server is restored without the other senders' contributions (O(n) state):
            # every check on a message needs only that state, so refusals are unchanged.
            server = _server(protocol)
            try:
                contribution = {
                    ADVERTISE: server.receive_advertise_keys,
                    SHARE: server.receive_share_keys,
                    MASKED: server.receive_masked_input,
                    UNMASK: server.receive_unmask_response,
                }[phase](body, sender=organisation.slug)  # the token says who posted: no speaking for another
            except secagg.SecAggError as exc:
                raise ProtocolRejected(f"{phase} from {organisation.slug} refused: {exc}", secagg_code=getattr(exc, "code", "protocol_error")) from exc
            if contribution is not None:  # ShareKeys, unmask response: one row, O(n)
                ProtocolMessage.objects.create(round=round, phase=phase, party=contribution.sender, data=contribution.data)
            protocol.state = server.to_dict(contributions=False)
            protocol.pending = server.pending()
            fields = ["state", "pending", "updated_at"]
            if phase == MASKED:
                protocol.running_sum = server.running_sum_bytes()
                fields.append("running_sum")
            protocol.save(update_fields=fields)
            result = {"accepted": True}
        link.last_phase = phase
        link.save(update_fields=["last_phase", "metrics"])
        if not _pending(round, protocol, None if phase == EVALUATE else server):
            _enqueue_close_now(round, phase)
    return result


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
    from fedgov.errors import ValidationFailed

    organisation = agent_organisation(user)
    agents.agent_seen(organisation=organisation)
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
        protocol = RoundProtocol.objects.filter(round=round).first()
        if protocol is not None and phase in AGENT_PHASES:
            declined = set(round.metrics["refusals"])
            if not set(_pending(round, protocol)) - declined:
                _enqueue_close_now(round, phase)
    return {"accepted": True, "code": code}


def refusals_summary(round: TrainingRound) -> str:
    """'org-a declined (ticket_mismatch: ...); org-b declined (...)', or ''."""
    refusals = (round.metrics or {}).get("refusals") or {}
    return "; ".join(f"{slug} declined ({r['code']}: {r['reason']})" for slug, r in sorted(refusals.items()))


def agent_receipt(*, user, round_id: int, body: bytes) -> dict:
    """Check the partner's signed receipt for the round against its ticket, its enrolled
    identity key and the RESERVE's event, and store it beside the ticket (write once)."""
    import json

    organisation = agent_organisation(user)
    agents.agent_seen(organisation=organisation)
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
        from accounting.accountant import canonical_json

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
        from accounting.services import receipt_record

        receipt_record(receipt=receipt, organisation=organisation, public_key=enrolled)
        ticket.receipt, ticket.receipt_at = receipt, timezone.now()
        ticket.save(update_fields=["receipt", "receipt_at"])
        missing = round.metrics.get("receipts_missing")
        if missing and organisation.slug in missing:  # arrived after the round was flagged
            round.metrics = {**round.metrics, "receipts_missing": [s for s in missing if s != organisation.slug]}
            round.save(update_fields=["metrics"])
    return {"accepted": True}


def _receive_evaluation(round: TrainingRound, link: RoundParticipant, body: bytes) -> dict:
    from ..learning import EvaluationRelease

    if "evaluation" in link.metrics:
        raise ProtocolRejected("This partner already released its evaluation for the round.", secagg_code="replay")
    try:
        data = strictjson.loads(body)  # NaN and Infinity are not JSON: the metrics column refuses them
        release = EvaluationRelease.from_dict(data)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise ProtocolRejected(f"Evaluation release is malformed: {exc}", secagg_code="malformed") from None
    if not all(math.isfinite(v) for v in release.to_dict().values()):  # "nan" as text reads as NaN too
        raise ProtocolRejected("Evaluation release is malformed: every figure must be a finite number.", secagg_code="malformed")
    if round.plan.eval_noise_multiplier is None or abs(release.noise_multiplier - round.plan.eval_noise_multiplier) > 1e-9:
        raise ProtocolRejected("Evaluation noise does not match the plan's (what the ledger charged).", secagg_code="bad_parameters")
    link.metrics = {**link.metrics, "evaluation": release.to_dict()}
    return {"accepted": True}


# --- closing phases ---------------------------------------------------------------------------


def round_close_phase(*, round_id: int, phase: str, now=None) -> str:
    """Close `phase` of the round if it is still the current one (idempotent). Returns what
    happened, for the task's log."""
    from .rounds import round_abort

    with transaction.atomic():
        round = TrainingRound.objects.select_for_update().select_related("plan__agreement").filter(pk=round_id).first()
        if round is None or round.phase != phase or round.status not in (Status.RUNNING, Status.AGGREGATING):
            return "already closed"
        protocol = RoundProtocol.objects.get(round=round)
        now = now or timezone.now()
        if phase == EVALUATE:
            if _pending(round, protocol) and round.phase_deadline and round.phase_deadline > now:
                return "waiting"
            _complete(round)
            return "completed"
        server = _server(protocol)
        waiting = server.pending()
        declined = set((round.metrics or {}).get("refusals") or {})  # not waited for: they said no
        if set(waiting) - declined and round.phase_deadline and round.phase_deadline > now:
            return "waiting"
        for slug in waiting:  # missed the deadline or declined: dropouts
            RoundParticipant.objects.filter(round=round, dataset__organisation__slug=slug).update(status=RoundParticipant.Status.DROPPED)
        try:
            if phase == ADVERTISE:
                _relays_replace(round, SHARE, {ProtocolRelay.EVERYONE: server.close_advertise_keys()})
            elif phase == SHARE:
                _restore_contributions(round, server)  # the only read of every sender's shares
                _relays_replace(round, MASKED, server.close_share_keys())
                ProtocolMessage.objects.filter(round=round, phase=SHARE).delete()  # now in the relays
            elif phase == MASKED:
                _relays_replace(round, UNMASK, {ProtocolRelay.EVERYONE: server.close_masked_input()})
            elif phase == UNMASK:
                # Who answered is in the O(n) state; the responses stay in their rows until
                # the aggregation, which reads them outside the lock.
                if not server.can_finalize:
                    raise secagg.TooFewSurvivors(f"{len(server.responders)} unmasking answers, threshold is {server.config.threshold}")
        except secagg.SecAggError as exc:
            declined = refusals_summary(round)
            round_abort(
                actor=None, round=round, reason=f"Secure aggregation stopped in {phase}: {exc}" + (f". {declined}." if declined else ""),
                retryable=True,
            )
            return "aborted"
        protocol.state = server.to_dict(contributions=False)
        protocol.pending = server.pending()
        fields = ["state", "pending", "updated_at"]
        if phase == SHARE:  # the running sum starts (zeros) as ShareKeys closes; no other close changes it: 4d bytes not rewritten
            protocol.running_sum = server.running_sum_bytes()
            fields.append("running_sum")
        protocol.save(update_fields=fields)
        if phase == UNMASK:
            ProtocolRelay.objects.filter(round=round).delete()  # nothing is handed out any more
            round.phase = AGGREGATE
            round.phase_deadline = None
            round.save(update_fields=["phase", "phase_deadline"])
            from .. import tasks

            transaction.on_commit(lambda: tasks.round_aggregate_task.delay(round_id))
            return "aggregating"
        round.phase = NEXT_PHASE[phase]
        if phase == MASKED:
            round.status = Status.AGGREGATING
        round.phase_deadline = _deadline(round.plan)
        round.save(update_fields=["phase", "status", "phase_deadline"])
        _schedule_close(round, round.phase)
        return f"opened {round.phase}"


def round_aggregate(*, round_id: int) -> str:
    """Unmask the sum, dequantise, FedAvg, store the new global model (aggregation queue).

    Reads the stored state and does the slow work outside any lock; the result is written
    with a compare-and-set on phase == aggregate, so a redelivered task writes it once."""
    from .rounds import round_abort

    round = TrainingRound.objects.select_related("plan").filter(pk=round_id).first()
    if round is None or round.phase != AGGREGATE:
        return "not aggregating"
    protocol = RoundProtocol.objects.get(round=round)
    cfg = protocol.config
    server = _server(protocol)
    try:
        _restore_contributions(round, server)  # the unmask responses, read once
    except ValueError:
        # A redelivered task racing the one that just aggregated: that one deleted the
        # responses after the state was read here. Anything else is a real inconsistency.
        if TrainingRound.objects.filter(pk=round_id, phase=AGGREGATE).exists():
            raise
        return "already aggregated"
    try:
        result = server.finalize()
    except secagg.SecAggError as exc:
        with transaction.atomic():
            locked = TrainingRound.objects.select_for_update().get(pk=round_id)
            if locked.phase == AGGREGATE:
                round_abort(actor=None, round=locked, reason=f"Unmasking failed: {exc}", status=Status.FAILED)
        return "failed"
    plan = round.plan
    spec = QuantSpec(**cfg["quant"])
    update = secure_average(result.vector, spec, cfg["weights"], result.contributors)
    new_params, optimizer_state = server_apply(plan, plan.model_versions.get(version=cfg["model_version"]), update)
    with transaction.atomic():
        round = TrainingRound.objects.select_for_update().select_related("plan").get(pk=round_id)
        if round.phase != AGGREGATE:
            return "already aggregated"
        version = cfg["model_version"] + 1
        while ModelVersion.objects.filter(plan=plan, version=version).exists():
            version += 1
        model_store(
            plan=plan,
            version=version,
            params=new_params,
            round=round,
            metrics={"contributors": list(result.contributors), "dropouts": list(result.dropouts)},
            optimizer_state=optimizer_state,
        )
        RoundParticipant.objects.filter(round=round, dataset__organisation__slug__in=result.dropouts).update(status=RoundParticipant.Status.DROPPED)
        ProtocolMessage.objects.filter(round=round).delete()  # the unmask responses are used up
        round.metrics = {
            **round.metrics,
            "contributors": list(result.contributors),
            "dropouts": list(result.dropouts),
            "update_norm": float(np.linalg.norm(update)),
            "model_sha256": params_sha256(new_params),
        }
        if plan.eval_noise_multiplier:
            round.phase = EVALUATE
            round.phase_deadline = _deadline(plan)
            round.save(update_fields=["phase", "phase_deadline", "metrics"])
            _schedule_close(round, EVALUATE)
            return "evaluating"
        round.save(update_fields=["metrics"])
        _complete(round)
    return "completed"


def receipts_missing(round: TrainingRound) -> list[str]:
    """Partners whose masked input went into the sum but whose signed receipt never came.
    Their budget is charged all the same (committed with the round); the round is flagged."""
    sent = set(round.metrics.get("contributors", []))
    received = set(
        RoundTicket.objects.filter(participant__round=round, receipt__isnull=False).values_list("participant__dataset__organisation__slug", flat=True)
    )
    return sorted(sent - received)


def round_budget_settle(*, round: TrainingRound, actor=None) -> dict[str, list[int]]:
    """Charge or give back each reserved dataset of a round that ended after its
    masked-input phase opened (ARCHITECTURE.md, Ledger 2), under the caller's round lock.

    A partner whose masked input the coordinator received is charged (COMMIT, with its
    ticket hash), whatever happened next. One whose masked input never came (it refused the
    ticket, had no enrolled agent, dropped out) contributed to no sum and released no
    evaluation (only contributors evaluate): its reservation is RELEASED, naming why. One
    that sent a signed receipt stays charged all the same: its own ledger committed the
    round before the masked input would have left, and the two ledgers agree.

    Idempotent: a second call finds every reservation final and writes nothing."""
    from accounting import chain
    from accounting.models import LedgerEntry
    from accounting.services import budget_commit, budget_release_datasets

    protocol = RoundProtocol.objects.filter(round=round).only("config", "state").first()
    config = protocol.config if protocol is not None else {}
    received = set((protocol.state or {}).get("u3") or []) if protocol is not None else set()
    roster = set(config.get("roster") or [])
    refusals = (round.metrics or {}).get("refusals") or {}
    reserved = set(LedgerEntry.objects.filter(round_id=round.pk, kind=chain.RESERVE).values_list("dataset_id", flat=True))
    receipted = set(RoundTicket.objects.filter(participant__round=round, receipt__isnull=False).values_list("participant__dataset_id", flat=True))
    charge, reasons = [], {}
    for link in round.participant_links.select_related("dataset__organisation").order_by("dataset_id"):
        if link.dataset_id not in reserved:
            continue
        slug = link.dataset.organisation.slug
        if (slug in received and config.get("datasets", {}).get(slug) == link.dataset.slug) or link.dataset_id in receipted:
            charge.append(link.dataset_id)
            continue
        why = f"no masked input received from {slug}: "
        if slug in refusals:
            why += f"refused {refusals[slug]['code']}"
        elif slug not in roster:
            why += "no enrolled agent, not in the secure-aggregation roster"
        else:
            why += "dropped out before sending it"
        reasons[link.dataset_id] = why
    if reasons:
        budget_release_datasets(round=round, actor=actor, reasons=reasons, no_update_released=True)
    if charge:
        budget_commit(round=round, actor=actor, ticket_hashes=round_ticket_hashes(round), datasets=charge)
    return {"committed": charge, "released": sorted(reasons)}


def _complete(round: TrainingRound) -> None:
    """AGGREGATING -> COMPLETED under the caller's lock: commit the budget, record the
    accuracy, request the plan's next round or stop the plan saying why."""
    links = list(round.participant_links.all())
    releases = [link.metrics.get("evaluation") for link in links]
    accuracy = combine_accuracy(releases)
    interval = pooled_accuracy_interval(releases)  # 95%, from the noise sigma and the counts
    round.metrics = {
        **round.metrics,
        "accuracy": accuracy,
        "accuracy_interval": [interval.low, interval.high] if interval is not None else None,
        "evaluations": sum("evaluation" in link.metrics for link in links),
        "receipts_missing": receipts_missing(round),
    }
    RoundParticipant.objects.filter(round=round, status=RoundParticipant.Status.ACTIVE).update(status=RoundParticipant.Status.FINISHED)
    round.status = Status.COMPLETED
    round.phase = ""
    round.phase_deadline = None
    round.finished_at = timezone.now()
    round.save(update_fields=["status", "phase", "phase_deadline", "finished_at", "metrics"])
    round_budget_settle(round=round)
    ModelVersion.objects.filter(round=round).update(metrics={**round.metrics})
    event_record(
        kind=GovernanceEvent.Kind.ROUND_COMPLETED,
        message=f"Round {round.number} of '{round.plan.name}' completed with {len(round.metrics.get('contributors', []))} contributors"
        + (f", accuracy {accuracy:.3f}." if accuracy is not None else "."),
        agreement=round.plan.agreement,
        round=round,
    )
    TrainingPlan.objects.filter(pk=round.plan_id).update(consecutive_failures=0, retry_at=None)
    plan_continue(plan=round.plan)


def plan_continue(*, plan: TrainingPlan, actor=None) -> TrainingRound | None:
    """After a round: request the next one, or finish the plan; a next round that is blocked
    pauses or stops the plan, saying why (never "active with nothing live")."""
    from .rounds import round_request

    plan = TrainingPlan.objects.select_for_update().get(pk=plan.pk)
    if plan.status != TrainingPlan.Status.ACTIVE:
        return None
    if plan.rounds.filter(status=Status.COMPLETED).count() >= plan.rounds_total:
        plan.status = TrainingPlan.Status.COMPLETED
        plan.stopped_reason = f"All {plan.rounds_total} rounds completed."
        plan.retry_at = None
        plan.save(update_fields=["status", "stopped_reason", "retry_at"])
        return None
    if plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists():
        return None  # e.g. someone requested a round by hand during a retry's backoff
    # A blocked request pauses or stops the plan itself (services.rounds, plans.plan_blocked).
    return round_request(actor=actor, plan=plan, system=True)


def rounds_sweep_deadlines(*, now=None) -> int:
    """Beat safety net: close every phase past its deadline (a countdown task lost with a
    restarted Redis is re-created here). Also re-drives an aggregation that lost its task."""
    from .. import tasks

    now = now or timezone.now()
    n = 0
    for round_id, phase in TrainingRound.objects.filter(
        status__in=(Status.RUNNING, Status.AGGREGATING), phase__in=AGENT_PHASES, phase_deadline__lt=now
    ).values_list("pk", "phase"):
        tasks.phase_close_task.delay(round_id, phase)
        n += 1
    stale = now - timedelta(seconds=30)
    for round_id in TrainingRound.objects.filter(status=Status.AGGREGATING, phase=AGGREGATE, protocol__updated_at__lt=stale).values_list("pk", flat=True):
        tasks.round_aggregate_task.delay(round_id)
        n += 1
    for round_id in TrainingRound.objects.filter(status=Status.APPROVED, requested_at__lt=stale).values_list("pk", flat=True):
        tasks.round_start_task.delay(round_id)
        n += 1
    return n

