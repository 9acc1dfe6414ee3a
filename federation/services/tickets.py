"""Round tickets (ARCHITECTURE.md, Trust 1): what the RESERVE charged and the partner runs,
frozen and signed with the ledger key at reservation; and what the partners' receipts say
back (Trust 3)."""

from __future__ import annotations

from django.utils import timezone

from fedgov.errors import ApplicationError

from ..agent import trust
from ..models import ModelVersion, RoundParticipant, RoundTicket, TrainingRound
from .protocol import secagg_round_id


def ticket_document(*, round: TrainingRound, link: RoundParticipant, reserve, model: ModelVersion, config: dict) -> dict:
    """The unsigned ticket of one participant (federation/agent/trust.py): everything the RESERVE
    charged and the partner runs, as frozen at reservation."""
    import json

    from accounting import heads
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
        "key_id": heads.key_id(),
        "issued_at": iso(timezone.now()),
    }


def round_tickets_issue(*, round: TrainingRound, links: list[RoundParticipant], model: ModelVersion, config: dict) -> list[RoundTicket]:
    """Freeze and sign one ticket per participant, in the transaction that reserved the budget
    (services.rounds.round_start, once the protocol is open). A participant already holding one keeps it."""
    from accounting import heads
    from accounting.models import LedgerEntry

    reserves = {e.dataset_id: e for e in LedgerEntry.objects.filter(round_id=round.pk, kind="RESERVE")}
    held = set(RoundTicket.objects.filter(participant__in=links).values_list("participant_id", flat=True))
    key = heads.signing_key()
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


def ticket_for(round: TrainingRound, dataset) -> dict | None:
    """The signed ticket of `dataset`'s participation in the round, if one was issued."""
    ticket = RoundTicket.objects.filter(participant__round=round, participant__dataset=dataset).first()
    return ticket_signed(ticket) if ticket is not None else None


def receipts_missing(round: TrainingRound) -> list[str]:
    """Partners whose masked input went into the sum but whose signed receipt never came.
    Their budget is charged all the same (committed with the round); the round is flagged."""
    sent = set(round.metrics.get("contributors", []))
    received = set(
        RoundTicket.objects.filter(participant__round=round, receipt__isnull=False).values_list("participant__dataset__organisation__slug", flat=True)
    )
    return sorted(sent - received)
