"""The secure-aggregation glue: open a round's protocol, accept a partner's message, close a phase.

    RUNNING      advertise_keys -> share_keys -> masked_input
    AGGREGATING  unmask_response -> aggregate -> evaluate

This module drives the Bonawitz server (federation/secagg) from the stored state and answers
with an `Outcome` ("advanced", "abort: too few", "ready to aggregate", ...); it never moves
a round's status or phase and never imports the lifecycle: services/rounds.py acts on the
outcomes, under the round's row lock that its callers hold.

Storage keeps the work per partner message and per poll O(n): `RoundProtocol.state` is the
server's O(n) state (keys, who answered), each accepted ShareKeys / unmask response is one
`ProtocolMessage` row (read back only by the close that needs them all, once) and each
recipient's relay one `ProtocolRelay` row (a poll reads its own).
"""

from __future__ import annotations

import base64
import enum
import math
from dataclasses import dataclass, field

import numpy as np

from fedgov import strictjson
from fedgov.errors import ApplicationError

from .. import secagg
from ..learning import QuantSpec, fedavg_weights
from ..models import (
    AgentIdentity,
    ModelVersion,
    ProtocolMessage,
    ProtocolRelay,
    RoundParticipant,
    RoundProtocol,
    TrainingPlan,
    TrainingRound,
)

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


class Next(enum.Enum):
    """What the lifecycle does after the protocol has spoken."""

    OPENED = "opened"  # the protocol is open: the lifecycle opens `phase` (advertise_keys)
    ABORT = "abort"  # too few partners left for the threshold: abort (retryable), `reason` says why
    WAITING = "waiting"  # the phase waits for more answers before its deadline
    ADVANCED = "advanced"  # the phase closed; the lifecycle opens `phase`, the next one
    AGGREGATE = "ready to aggregate"  # enough unmasking answers: the lifecycle enqueues the aggregation
    EVALUATED = "evaluated"  # the evaluation phase closed: the lifecycle completes the round
    ACCEPTED = "accepted"  # a partner's message was taken; others are still awaited
    PHASE_DONE = "phase done"  # a message was taken and nobody else is awaited: close the phase now


@dataclass(frozen=True)
class Outcome:
    next: Next
    phase: str = ""
    reason: str = ""
    links: tuple = ()  # OPENED: the participants in the roster
    config: dict = field(default_factory=dict)  # OPENED: the protocol's config
    result: dict = field(default_factory=dict)  # ACCEPTED / PHASE_DONE: the answer to the agent


def secagg_round_id(round: TrainingRound) -> str:
    return f"round-{round.pk}"


def quant_spec(plan: TrainingPlan, n_parties: int) -> QuantSpec:
    """Fixed-point range for a weighted update in the masked sum: K steps of lr times an
    averaged clipped gradient (norm <= C) plus noise; twice that leaves headroom, beyond it
    is clipped."""
    clip = max(1e-3, 2.0 * plan.learning_rate * plan.local_steps * plan.clip_norm)
    return QuantSpec(clip=clip, n_parties=n_parties)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def protocol_server(protocol: RoundProtocol) -> secagg.SecAggServer:
    """The server from its O(n) state: it validates messages but holds no contribution."""
    return secagg.SecAggServer.from_dict(protocol.state, running_sum=bytes(protocol.running_sum) if protocol.running_sum is not None else None)


def contributions_restore(round: TrainingRound, server: secagg.SecAggServer) -> None:
    """Hand the server its current phase's contributions (all of them, once) before it
    closes ShareKeys or finalizes."""
    rows = ProtocolMessage.objects.filter(round=round, phase=server.phase).values_list("party", "data")
    server.restore_contributions(dict(rows))


def refusals_summary(round: TrainingRound) -> str:
    """'org-a declined (ticket_mismatch: ...); org-b declined (...)', or ''."""
    refusals = (round.metrics or {}).get("refusals") or {}
    return "; ".join(f"{slug} declined ({r['code']}: {r['reason']})" for slug, r in sorted(refusals.items()))


def pending(round: TrainingRound, protocol: RoundProtocol, server=None) -> list[str]:
    """Who the round's current phase still waits for."""
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


def protocol_open(*, round: TrainingRound, model: ModelVersion) -> Outcome:
    """RUNNING round, budget reserved: fix the roster (participants with an enrolled agent,
    less those left out at the start because their agent was offline: services/agents.py),
    the threshold and the global model `model`, and store the server's state for
    AdvertiseKeys. ABORT when too few partners have an agent. Called under the round lock."""
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
        return Outcome(Next.ABORT, reason=f"Only {n} participant(s) have an enrolled agent; secure aggregation needs {threshold}.")
    dim = np.frombuffer(bytes(model.params), dtype=np.float32).size
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
    in_roster = tuple(link for link in links if link.dataset.organisation.slug in roster)
    return Outcome(Next.OPENED, phase=ADVERTISE, links=in_roster, config=protocol.config)


def protocol_accept(*, round: TrainingRound, link: RoundParticipant, phase: str, body: bytes) -> Outcome:
    """Take one partner message for the round's current `phase` (checked by the caller, under
    the round lock). Raises ProtocolRejected, changing nothing, when the message is refused.
    PHASE_DONE when nobody else is awaited (the caller closes the phase at once)."""
    protocol = RoundProtocol.objects.get(round=round)
    server = None
    if phase == EVALUATE:
        _receive_evaluation(round, link, body)
    else:
        # The server is restored without the other senders' contributions (O(n) state):
        # every check on a message needs only that state, so refusals are unchanged.
        server = protocol_server(protocol)
        sender = link.dataset.organisation.slug  # the token says who posted: no speaking for another
        try:
            contribution = {
                ADVERTISE: server.receive_advertise_keys,
                SHARE: server.receive_share_keys,
                MASKED: server.receive_masked_input,
                UNMASK: server.receive_unmask_response,
            }[phase](body, sender=sender)
        except secagg.SecAggError as exc:
            raise ProtocolRejected(f"{phase} from {sender} refused: {exc}", secagg_code=getattr(exc, "code", "protocol_error")) from exc
        if contribution is not None:  # ShareKeys, unmask response: one row, O(n)
            ProtocolMessage.objects.create(round=round, phase=phase, party=contribution.sender, data=contribution.data)
        protocol.state = server.to_dict(contributions=False)
        protocol.pending = server.pending()
        fields = ["state", "pending", "updated_at"]
        if phase == MASKED:
            protocol.running_sum = server.running_sum_bytes()
            fields.append("running_sum")
        protocol.save(update_fields=fields)
    link.last_phase = phase
    link.save(update_fields=["last_phase", "metrics"])
    done = not pending(round, protocol, server)
    return Outcome(Next.PHASE_DONE if done else Next.ACCEPTED, phase=phase, result={"accepted": True})


def protocol_all_declined(round: TrainingRound) -> bool:
    """After a refusal: True when everyone the current phase waits for has declined."""
    protocol = RoundProtocol.objects.filter(round=round).first()
    if protocol is None or round.phase not in AGENT_PHASES:
        return False
    declined = set((round.metrics or {}).get("refusals") or {})
    return not set(pending(round, protocol)) - declined


def _receive_evaluation(round: TrainingRound, link: RoundParticipant, body: bytes) -> None:
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


def _relays_replace(round: TrainingRound, phase: str, relays: dict[str, bytes]) -> None:
    """The relays handed out during `phase` (the one opening) replace the previous phase's."""
    ProtocolRelay.objects.filter(round=round).delete()
    ProtocolRelay.objects.bulk_create(ProtocolRelay(round=round, phase=phase, party=party, body=b64(body)) for party, body in relays.items())


def protocol_close(*, round: TrainingRound, phase: str, now) -> Outcome:
    """Close `phase`, the round's current phase (checked by the caller, under the round
    lock), if everyone answered or its deadline passed. Partners still awaited are dropouts."""
    protocol = RoundProtocol.objects.get(round=round)
    if phase == EVALUATE:
        if pending(round, protocol) and round.phase_deadline and round.phase_deadline > now:
            return Outcome(Next.WAITING, phase=phase)
        return Outcome(Next.EVALUATED, phase=phase)
    server = protocol_server(protocol)
    waiting = server.pending()
    declined = set((round.metrics or {}).get("refusals") or {})  # not waited for: they said no
    if set(waiting) - declined and round.phase_deadline and round.phase_deadline > now:
        return Outcome(Next.WAITING, phase=phase)
    for slug in waiting:  # missed the deadline or declined: dropouts
        RoundParticipant.objects.filter(round=round, dataset__organisation__slug=slug).update(status=RoundParticipant.Status.DROPPED)
    try:
        if phase == ADVERTISE:
            _relays_replace(round, SHARE, {ProtocolRelay.EVERYONE: server.close_advertise_keys()})
        elif phase == SHARE:
            contributions_restore(round, server)  # the only read of every sender's shares
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
        declined_words = refusals_summary(round)
        return Outcome(
            Next.ABORT, phase=phase, reason=f"Secure aggregation stopped in {phase}: {exc}" + (f". {declined_words}." if declined_words else "")
        )
    protocol.state = server.to_dict(contributions=False)
    protocol.pending = server.pending()
    fields = ["state", "pending", "updated_at"]
    if phase == SHARE:  # the running sum starts (zeros) as ShareKeys closes; no other close changes it: 4d bytes not rewritten
        protocol.running_sum = server.running_sum_bytes()
        fields.append("running_sum")
    protocol.save(update_fields=fields)
    if phase == UNMASK:
        ProtocolRelay.objects.filter(round=round).delete()  # nothing is handed out any more
        return Outcome(Next.AGGREGATE, phase=AGGREGATE)
    return Outcome(Next.ADVANCED, phase=NEXT_PHASE[phase])
