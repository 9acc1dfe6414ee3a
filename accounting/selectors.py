"""Reads of the privacy-budget ledger (ARCHITECTURE.md, Conventions 1)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, OuterRef, QuerySet

from . import chain
from .models import DatasetBudget, LedgerEntry, Receipt, SignedHead


def dataset_budget_state(*, dataset) -> DatasetBudget | None:
    return DatasetBudget.objects.filter(dataset_id=dataset.pk).first()


def dataset_epsilon_spent(*, dataset) -> float:
    """Spent epsilon at the dataset's delta: every committed and every open reservation."""
    budget = dataset_budget_state(dataset=dataset)
    return budget.epsilon_spent if budget else 0.0


def dataset_remaining_budget(*, dataset) -> float:
    """Budget minus spent (the lower of the ledger's last GRANT and the Dataset's budget)."""
    budget = dataset_budget_state(dataset=dataset)
    if budget is None or budget.entry_count == 0:
        return float(dataset.epsilon_budget)
    return min(budget.epsilon_budget, float(dataset.epsilon_budget)) - budget.epsilon_spent


@dataclass(frozen=True)
class BudgetFigures:
    epsilon_spent: float
    epsilon_remaining: float


def datasets_budget_figures(*, datasets) -> dict[int, BudgetFigures]:
    """Spent and remaining epsilon for many datasets in one query (list pages), by the same
    rule as dataset_remaining_budget: the lower of the last GRANT and the Dataset's budget."""
    datasets = list(datasets)
    rows = {b.dataset_id: b for b in DatasetBudget.objects.filter(dataset_id__in=[d.pk for d in datasets])}
    out = {}
    for dataset in datasets:
        row = rows.get(dataset.pk)
        if row is None or row.entry_count == 0:
            out[dataset.pk] = BudgetFigures(0.0, float(dataset.epsilon_budget))
        else:
            out[dataset.pk] = BudgetFigures(row.epsilon_spent, effective_budget(row, dataset) - row.epsilon_spent)
    return out


def dataset_budget_summary(*, dataset) -> dict:
    budget = dataset_budget_state(dataset=dataset)
    open_rounds = list(open_reservations(dataset=dataset).values_list("round_id", flat=True))
    return {
        "dataset": dataset.slug,
        "epsilon_budget": float(dataset.epsilon_budget),
        "delta": float(dataset.delta),
        "accountant": dataset.accountant,
        "epsilon_spent": budget.epsilon_spent if budget else 0.0,
        "epsilon_remaining": dataset_remaining_budget(dataset=dataset),
        "entries": budget.entry_count if budget else 0,
        "head_hash": budget.head_hash if budget else chain.GENESIS_HASH,
        "open_reservations": open_rounds,
    }


def ledger_entries(*, dataset=None, round=None) -> QuerySet[LedgerEntry]:
    qs = LedgerEntry.objects.all()
    if dataset is not None:
        qs = qs.filter(dataset_id=dataset.pk)
    if round is not None:
        qs = qs.filter(round_id=round.pk)
    return qs.order_by("dataset_id", "seq")


def open_reservations(*, dataset=None, round=None) -> QuerySet[LedgerEntry]:
    """RESERVE entries with neither a COMMIT nor a RELEASE yet: budget held by rounds that
    are running, or whose process died before finishing (they still count as spent)."""
    closed = LedgerEntry.objects.filter(
        dataset_id=OuterRef("dataset_id"), round_id=OuterRef("round_id"), kind__in=[chain.COMMIT, chain.RELEASE]
    )
    qs = ledger_entries(dataset=dataset, round=round).filter(kind=chain.RESERVE).filter(~Exists(closed))
    return qs


def round_reservation_state(*, round) -> dict[str, str]:
    """dataset slug -> "reserved" | "committed" | "released" for one round."""
    out: dict[str, str] = {}
    order = {chain.RESERVE: "reserved", chain.COMMIT: "committed", chain.RELEASE: "released"}
    for slug, kind in ledger_entries(round=round).values_list("dataset_slug", "kind"):
        if kind in order and (slug not in out or kind != chain.RESERVE):
            out[slug] = order[kind]
    return out


def signed_heads(*, dataset) -> QuerySet[SignedHead]:
    return SignedHead.objects.filter(dataset_id=dataset.pk).order_by("seq")


def receipts(*, dataset=None, round=None) -> QuerySet[Receipt]:
    """Stored receipts, in each dataset's receipt-chain order."""
    qs = Receipt.objects.all()
    if dataset is not None:
        qs = qs.filter(dataset_id=dataset.pk)
    if round is not None:
        qs = qs.filter(round_id=round.pk)
    return qs.order_by("dataset_id", "seq")


def unreceipted_commits(*, dataset=None) -> QuerySet[LedgerEntry]:
    """COMMITs naming a ticket whose partner's receipt never came: charged (the budget stays
    spent) and flagged; the bundle verifier fails on them (docs/TRUST-FORMATS.md)."""
    got = Receipt.objects.filter(dataset_id=OuterRef("dataset_id"), round_id=OuterRef("round_id"))
    qs = ledger_entries(dataset=dataset).filter(kind=chain.COMMIT, payload__contains='"ticket_hash":')
    return qs.filter(~Exists(got))


def effective_budget(budget: DatasetBudget, dataset) -> float:
    """The budget a check applies: the ledger's last GRANT, or the Dataset's budget if lower.
    If the Dataset row was lowered behind the ledger's back, the lower figure wins; never the
    higher: when in doubt, spend less."""
    if budget.entry_count == 0:
        return float(dataset.epsilon_budget)
    return min(budget.epsilon_budget, float(dataset.epsilon_budget))
