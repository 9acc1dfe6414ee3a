"""Budget ledgers: who reads which (`access.ledger_datasets`), their entries and series."""

from __future__ import annotations

from .. import access
from ..models import Dataset
from .datasets import dataset_for, datasets_for


def ledger_dataset_for(*, user, slug: str) -> Dataset:
    """The dataset whose ledger (or audit bundle) `user` reads: 404 if they cannot see the
    dataset, 403 if they see it but may not read its ledger."""
    dataset = dataset_for(user=user, slug=slug)
    access.require_ledger_reader(user, dataset)
    return dataset


def ledger_dataset_by_pk(*, user, pk: int | None) -> Dataset:
    """The API's ledger lookup by id, with the same answers as `ledger_dataset_for`.

    Administrators and the agreement's auditors always see the dataset, so for them (an
    auditor's read API is what these endpoints are for) one query answers: the dataset, if it
    exists and (for an auditor) its agreement lists them among its auditors; that is
    `access.audits()`, joined into the lookup. Everyone else, and an auditor of another
    agreement, goes through the visible set and `require_ledger_reader` instead."""
    from fedgov.errors import NotFound

    if pk is not None and (access.is_administrator(user) or access.is_auditor(user)):
        # The row alone: no join for the organisation (only the 403 message names it, and
        # that path loads it), no ORDER BY to compile for a primary-key lookup.
        datasets = Dataset.objects.filter(pk=pk).order_by()
        if not access.is_administrator(user):
            datasets = datasets.filter(agreement__auditors=user.pk)
        dataset = next(iter(datasets[:1]), None)
        if dataset is not None:
            return dataset
    dataset = next(iter(datasets_for(user=user).filter(pk=pk).order_by()[:1]), None) if pk is not None else None
    if dataset is None:
        raise NotFound("Dataset not found.")
    access.require_ledger_reader(user, dataset)
    return dataset


def ledger_entries(*, dataset, kind: str | None = None, round_id: int | None = None, round_number: int | None = None):
    from accounting import selectors as acct

    qs = acct.ledger_entries(dataset=dataset).select_related("round__plan")
    if kind:
        qs = qs.filter(kind=kind)
    if round_id:
        qs = qs.filter(round_id=round_id)
    if round_number:
        # The number the page shows (#1 of its plan), not the internal id (issue 17).
        qs = qs.filter(round__number=round_number)
    return qs


def ledger_size(*, dataset) -> int:
    from accounting import selectors as acct

    return acct.ledger_entries(dataset=dataset).count()


def ledger_series(*, dataset) -> list[dict]:
    """(time, epsilon spent after, budget in force) of every entry, for the epsilon plot."""
    from accounting import selectors as acct

    return list(
        acct.ledger_entries(dataset=dataset)
        .order_by("seq")
        .values("seq", "kind", "created_at", "epsilon_spent_after", "epsilon_budget", "round_id")
    )


def has_signed_head(*, dataset) -> bool:
    """Whether the dataset's chain has a signed head yet (without one there is no bundle)."""
    from accounting.models import SignedHead

    return SignedHead.objects.filter(dataset_id=dataset.pk).exists()
