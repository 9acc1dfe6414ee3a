"""A round's budget at its end, dataset by dataset (ARCHITECTURE.md, Ledger 2).

Called by the lifecycle (services/rounds.py) under the round's row lock, once the round's
final status is saved (the ledger releases only on a final round).
"""

from __future__ import annotations

from ..models import RoundProtocol, RoundTicket, TrainingRound
from .tickets import round_ticket_hashes


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
    from accounting.services.budget import budget_commit, budget_release_datasets

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

