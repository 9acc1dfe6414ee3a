"""The ledger on the database: locking and appending.

Services (accounting/services/budget.py) decide *what* to append; this module does the appending
the one way it may be done:

1. the caller is inside `transaction.atomic()`;
2. `lock_budget()` takes the dataset's DatasetBudget row with `select_for_update()` (on
   SQLite, fedgov's IMMEDIATE transactions hold the database write lock from BEGIN), so the
   head hash, the sequence number and the cumulative RDP vector read next are the latest,
   and nobody else appends to this chain until we commit;
3. `append()` builds the entry document (accounting/chain.py), hashes it with the previous
   head, inserts it and moves the head.

The coordinator's key and the signed chain heads are `accounting.heads`; verifying the chains
and exporting an audit bundle, `accounting.audit`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from . import accountant as acc
from . import chain, dp_events
from .models import DatasetBudget, LedgerEntry

log = logging.getLogger(__name__)

VERIFY_CHUNK_SIZE = 2000


# --- locking and appending --------------------------------------------------------------------


def _require_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("ledger appends must run inside transaction.atomic()")


def lock_budget(dataset) -> DatasetBudget:
    """Lock (and if need be create) the dataset's budget row for the rest of the transaction.

    This row serialises every append to the dataset's chain: two rounds checking and
    reserving at once queue here, and the second sees the first's reservation (the race
    ARCHITECTURE.md, Ledger 1 forbids). Lock several datasets in increasing id order only.
    """
    _require_transaction()
    budget = DatasetBudget.objects.select_for_update().filter(dataset_id=dataset.pk).first()
    if budget is not None:
        return budget
    try:
        with transaction.atomic():  # a savepoint: on PostgreSQL a lost race must not poison the transaction
            DatasetBudget.objects.create(
                dataset_id=dataset.pk,
                chain_slug=dataset.slug,
                accountant=dataset.accountant,
                epsilon_budget=0.0,
                delta=dataset.delta,
                cum_rdp=acc.rdp_to_json(acc.zero_rdp()),
            )
    except IntegrityError:
        pass  # another transaction created it; the locking read below waits for its commit
    return DatasetBudget.objects.select_for_update().get(dataset_id=dataset.pk)


def chain_name(dataset, budget: DatasetBudget) -> str:
    """A chain is named by its dataset's slug when the ledger opened, for good (bundles use it;
    renaming a dataset does not fork its chain)."""
    return budget.chain_slug or dataset.slug


def live_event_keys(dataset_id: int) -> list[str]:
    """Events reserved and not released, in reservation order (what PLD composes). O(ledger)."""
    live: dict[int, str] = {}
    rows = (
        LedgerEntry.objects.filter(dataset_id=dataset_id, kind__in=[chain.RESERVE, chain.RELEASE])
        .order_by("seq")
        .values_list("kind", "round_id", "event")
    )
    for kind, round_id, event in rows.iterator(chunk_size=VERIFY_CHUNK_SIZE):
        if kind == chain.RESERVE:
            live[round_id] = event
        else:
            live.pop(round_id, None)
    return list(live.values())


@dataclass(frozen=True)
class Projection:
    """What a dataset's chain would hold after one more entry."""

    cum: np.ndarray
    epsilon_spent: float
    accountant: str
    delta: float


def project(
    budget: DatasetBudget,
    dataset,
    *,
    add: tuple[str, np.ndarray] | None = None,
    remove: tuple[str, np.ndarray] | None = None,
) -> Projection:
    """Composition after adding (RESERVE) or removing (RELEASE) one event; O(orders) for RDP.

    Epsilon is taken at the dataset's current delta with its current accountant, exactly as
    chain.ChainVerifier recomputes it, so the stored figure replays bit for bit.
    """
    cum = acc.rdp_from_json(budget.cum_rdp)
    if add is not None:
        cum = acc.rdp_add(cum, add[1])
    if remove is not None:
        cum = acc.rdp_subtract(cum, remove[1])
    accountant, delta = str(dataset.accountant), float(dataset.delta)
    if add is None and remove is None and accountant == budget.accountant and delta == budget.delta:
        return Projection(cum, budget.epsilon_spent, accountant, delta)  # nothing changed
    live: list[str] = []
    if accountant == "pld":
        live = live_event_keys(dataset.pk)
        if add is not None:
            live.append(add[0])
        if remove is not None:
            live.remove(remove[0])
    eps = chain.spent_epsilon(accountant=accountant, delta=delta, cum=cum, live_events=live)
    return Projection(cum, eps, accountant, delta)


def append(
    budget: DatasetBudget,
    dataset,
    *,
    kind: str,
    projection: Projection,
    epsilon_budget: float,
    actor: str,
    round_id: int | None = None,
    event: str | None = None,
    payload: dict | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    """Append one entry to the locked chain and move its head. Call only after lock_budget()."""
    _require_transaction()
    entry = build_entry(
        budget,
        dataset_slug=chain_name(dataset, budget),
        kind=kind,
        projection=projection,
        epsilon_budget=epsilon_budget,
        actor=actor,
        round_id=round_id,
        event=event,
        payload=payload,
        now=now,
    )
    entry.dataset_id = dataset.pk
    # Ledger rows are built by code from validated inputs; full_clean() would add two
    # uniqueness queries per append. The database constraints and the chain check stand guard.
    entry.save()
    advance(budget, entry, projection)
    budget.save()
    return entry


def build_entry(
    budget: DatasetBudget,
    *,
    dataset_slug: str,
    kind: str,
    projection: Projection,
    epsilon_budget: float,
    actor: str,
    round_id: int | None = None,
    event: str | None = None,
    payload: dict | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    """The next entry of `budget`'s chain (not saved). `advance()` then moves the head."""
    if kind not in chain.KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    created_at = (now or timezone.now()).astimezone(UTC)
    payload_text = dp_events.canonical_json(payload or {})
    entry = LedgerEntry(
        dataset_id=budget.dataset_id,
        dataset_slug=dataset_slug,
        seq=budget.entry_count + 1,
        kind=kind,
        round_id=round_id,
        event=event or "",
        accountant=projection.accountant,
        delta=chain.clean_float(projection.delta),
        epsilon_budget=chain.clean_float(epsilon_budget),
        epsilon_spent_after=chain.clean_float(projection.epsilon_spent),
        actor=(actor or "system")[:150],
        created_at=created_at,
        payload=payload_text,
        prev_hash=budget.head_hash,
    )
    doc = entry.document()
    doc.pop("entry_hash")
    entry.entry_hash = chain.compute_entry_hash(doc)
    return entry


def advance(budget: DatasetBudget, entry: LedgerEntry, projection: Projection) -> None:
    budget.entry_count = entry.seq
    budget.head_hash = entry.entry_hash
    budget.cum_rdp = acc.rdp_to_json(projection.cum)
    budget.epsilon_spent = entry.epsilon_spent_after
    budget.epsilon_budget = entry.epsilon_budget
    budget.accountant = entry.accountant
    budget.delta = entry.delta


def actor_name(actor: Any) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor or "system"
    return getattr(actor, "get_username", lambda: "")() or getattr(actor, "username", "") or "system"
