"""Writes to the privacy-budget ledger (ARCHITECTURE.md, Conventions 1): grant, reserve, commit, release.

ARCHITECTURE.md, Ledger 1 and 2, in code:

* `budget_reserve` checks and reserves a round on every participating dataset in one
  transaction, locking each dataset's budget row in increasing dataset id order (so two
  rounds sharing datasets queue instead of deadlocking). The check composes the dataset's
  cumulative RDP vector (every committed and every open reservation) with the round's
  event; a single dataset over budget raises BudgetExceeded and nothing is written.
* `budget_commit` marks reservations final when a round ends (nothing is refunded).
* `budget_release` gives a reservation back only with explicit proof that no update of the
  dataset left the partner (`no_update_released=True`) and a round in a state that shows it
  (failed, aborted, blocked or rejected). Without both, the budget stays spent.
* `budget_release_datasets` releases single datasets of a round, completed or stopped after
  the masked-input phase opened, whose partner's masked input the coordinator never
  received (refused, left out, dropped out): nothing computed from their data was released.
* `budget_grant` records a new budget on the ledger.

Partners' receipts of the rounds they ran are recorded beside the ledger by
`accounting.services.receipts`.

Each function joins the caller's transaction (round_start, round_abort, dataset_register
call them inside theirs) and signs the new chain heads after the commit.
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from django.db import transaction

from .. import accountant as acc
from .. import chain, dp_events, heads, ledger
from ..errors import (
    MSG_ALREADY_FINAL,
    MSG_BAD_BUDGET,
    MSG_BAD_EVENT,
    MSG_BAD_TICKET_HASH,
    MSG_NO_PARTICIPANTS,
    MSG_NOTHING_RESERVED,
    MSG_RELEASE_INPUT_RECEIVED,
    MSG_RELEASE_NO_REASON,
    MSG_RELEASE_ROUND_STATE,
    MSG_RELEASE_WITHOUT_PROOF,
    MSG_RESERVED_AFTER_RELEASE,
    BudgetExceeded,
    InvalidBudget,
    LedgerStateError,
    ReleaseRefused,
)
from ..models import DatasetBudget, LedgerEntry
from ..selectors import effective_budget

__all__ = [
    "BudgetExceeded",
    "BudgetCheckResult",
    "ReleaseRefused",
    "LedgerStateError",
    "budget_grant",
    "budget_reserve",
    "budget_commit",
    "budget_release",
    "budget_release_datasets",
    "budget_check",
    "round_dp_event",
]

# Round states that show no update was released: the round never ran (blocked, rejected)
# or was stopped (failed, aborted) by a caller that vouches, with no_update_released=True,
# that it stopped before any masked input left a partner.
RELEASABLE_ROUND_STATES = ("failed", "aborted", "blocked", "rejected")


def round_dp_event(*, round, dataset) -> tuple[str, object]:
    """(canonical JSON, DpEvent) of what one round of its plan charges to `dataset`."""
    params = round.plan.dp_params_for(dataset)
    try:
        return _event_for_params(tuple(sorted(params.items())))
    except TypeError:  # unhashable parameter values: build without the memo
        return _build_event(params, dataset)
    except (dp_events.InvalidDpEvent, ValueError) as e:
        raise InvalidBudget(MSG_BAD_EVENT.format(dataset=dataset.slug, error=e)) from None


@functools.lru_cache(maxsize=1024)
def _event_for_params(items: tuple) -> tuple[str, object]:
    # Every round of a plan on a dataset charges the same event: build and validate it once.
    event = dp_events.dataset_round_event(dict(items))
    return dp_events.canonical_json(event), event


def _build_event(params: dict, dataset) -> tuple[str, object]:
    try:
        event = dp_events.dataset_round_event(params)
    except (dp_events.InvalidDpEvent, ValueError, TypeError) as e:
        raise InvalidBudget(MSG_BAD_EVENT.format(dataset=dataset.slug, error=e)) from None
    return dp_events.canonical_json(event), event


def _round_states(round_id: int, dataset_ids) -> dict[int, set[str]]:
    """Kinds of ledger entries each dataset already has for this round."""
    states: dict[int, set[str]] = defaultdict(set)
    rows = (
        LedgerEntry.objects.filter(round_id=round_id, dataset_id__in=list(dataset_ids))
        .order_by()
        .values_list("dataset_id", "kind")
    )
    for dataset_id, kind in rows:
        states[dataset_id].add(kind)
    return states


def _open_ledger(budget: DatasetBudget, dataset, actor) -> None:
    """A ledger that has never had a GRANT opens with the dataset's registered budget."""
    if budget.entry_count == 0:
        ledger.append(
            budget,
            dataset,
            kind=chain.GRANT,
            projection=ledger.project(budget, dataset),
            epsilon_budget=float(dataset.epsilon_budget),
            actor=ledger.actor_name(actor),
            payload={"epsilon_budget": float(dataset.epsilon_budget), "reason": "ledger opened with the registered budget"},
        )


def budget_grant(*, dataset, epsilon_budget: float, actor, reason: str = "") -> LedgerEntry:
    """Record `epsilon_budget` as the dataset's budget (a GRANT entry). The budget itself is a
    field of federation.Dataset, set by the caller; the ledger keeps its history."""
    if (
        isinstance(epsilon_budget, bool)
        or not isinstance(epsilon_budget, (int, float))
        or not math.isfinite(epsilon_budget)
        or epsilon_budget <= 0
    ):
        raise InvalidBudget(
            MSG_BAD_BUDGET.format(value=epsilon_budget), fields={"epsilon_budget": [MSG_BAD_BUDGET.format(value=epsilon_budget)]}
        )
    payload = {"epsilon_budget": float(epsilon_budget)}
    if reason:
        payload["reason"] = reason
    with transaction.atomic():
        budget = ledger.lock_budget(dataset)
        entry = ledger.append(
            budget,
            dataset,
            kind=chain.GRANT,
            projection=ledger.project(budget, dataset),
            epsilon_budget=float(epsilon_budget),
            actor=ledger.actor_name(actor),
            payload=payload,
        )
        heads.sign_heads_after_commit([dataset.pk])
    return entry


@dataclass(frozen=True)
class BudgetCheckResult:
    """One dataset's answer to "can this round run?" (epsilon at the dataset's delta)."""

    dataset: object
    requested: float  # epsilon(spent + this round) - spent; 0 when already reserved
    remaining: float  # budget - spent
    spent: float
    budget: float
    ok: bool
    reserved: bool = False  # the round already holds a reservation on this dataset


def _check_one(*, budget: DatasetBudget, dataset, key: str, vector) -> tuple[ledger.Projection, float, float, float]:
    projection = ledger.project(budget, dataset, add=(key, vector))
    spent = ledger.project(budget, dataset).epsilon_spent
    return projection, spent, effective_budget(budget, dataset), projection.epsilon_spent - spent


def budget_check(*, round) -> list[BudgetCheckResult]:
    """Per participating dataset: what this round would need and what remains. Read-only,
    no locks: the answer can be stale by the time the round starts, which is why
    budget_reserve checks again under the lock."""
    datasets = sorted(round.participating_datasets().select_related("budget_state").order_by(), key=lambda d: d.pk)
    budgets = _budgets_with_round_state(round.pk, datasets)
    results = []
    for dataset in datasets:
        budget = budgets.get(dataset.pk) or _empty_budget(dataset)
        if getattr(budget, "has_reserve", False):
            spent = ledger.project(budget, dataset).epsilon_spent
            limit = effective_budget(budget, dataset)
            released = budget.has_release
            results.append(BudgetCheckResult(dataset, 0.0, limit - spent, spent, limit, not released, reserved=not released))
            continue
        key, event = round_dp_event(round=round, dataset=dataset)
        projection, spent, limit, requested = _check_one(budget=budget, dataset=dataset, key=key, vector=acc.rdp_vector(event))
        results.append(BudgetCheckResult(dataset, requested, limit - spent, spent, limit, projection.epsilon_spent <= limit))
    return results


def _budgets_with_round_state(round_id: int, datasets: list) -> dict[int, DatasetBudget]:
    """The datasets' budget rows (fetched with them: `select_related("budget_state")`), each
    with `has_reserve` / `has_release` for this round. A read without locks, like
    `budget_check`. A dataset without a budget row has no ledger, hence no reservation. The
    round's entries are one plain query rather than two EXISTS subqueries: on this hot path
    (every governance report) the ORM's compile time is most of the cost, so it runs as few
    and as simple queries as it can (bench/accounting.py times it)."""
    rows = {}
    for d in datasets:
        try:
            rows[d.pk] = d.budget_state
        except DatasetBudget.DoesNotExist:
            continue
    # At most a RESERVE and a COMMIT or RELEASE per dataset and round: read them all, no
    # ORDER BY (on a long ledger it would make the seq index the scan), no DISTINCT.
    kinds = set(LedgerEntry.objects.filter(round_id=round_id, dataset_id__in=list(rows)).order_by().values_list("dataset_id", "kind")) if rows else set()
    for dataset_id, row in rows.items():
        row.has_reserve = (dataset_id, chain.RESERVE) in kinds
        row.has_release = (dataset_id, chain.RELEASE) in kinds
    return rows


def _empty_budget(dataset) -> DatasetBudget:
    return DatasetBudget(
        dataset_id=dataset.pk,
        chain_slug=dataset.slug,
        accountant=dataset.accountant,
        epsilon_budget=float(dataset.epsilon_budget),
        delta=float(dataset.delta),
        cum_rdp=acc.rdp_to_json(acc.zero_rdp()),
    )


def budget_reserve(*, round, actor) -> list[LedgerEntry]:
    """RESERVE this round's event on every participating dataset, or on none.

    Idempotent: a dataset already holding this round's reservation is skipped, so a task
    delivered twice reserves once. Returns the round's RESERVE entries (new and existing).
    Raises BudgetExceeded (for the first dataset over budget, by id; details list all)
    with nothing written.
    """
    datasets = sorted(round.participating_datasets(), key=lambda d: d.pk)
    if not datasets:
        raise LedgerStateError(MSG_NO_PARTICIPANTS.format(round=round.pk))
    # Slow work before taking any lock (ARCHITECTURE.md, Conventions 7): the events' RDP curves (~20 ms each the
    # first time, then memoised).
    events = {}
    for dataset in datasets:
        key, event = round_dp_event(round=round, dataset=dataset)
        events[dataset.pk] = (key, acc.rdp_vector(event))
    name = ledger.actor_name(actor)
    with transaction.atomic():
        # Lock in increasing dataset id order: two rounds sharing datasets A and B both lock
        # A first, so neither can hold B while waiting for A (no deadlock).
        budgets = {d.pk: ledger.lock_budget(d) for d in datasets}
        # Read the round's reservations only under the locks: a concurrent duplicate reserve
        # has either committed (we see it and skip) or waits behind us.
        states = _round_states(round.pk, budgets)
        todo, over = [], []
        for dataset in datasets:
            kinds = states.get(dataset.pk, set())
            if chain.RESERVE in kinds:
                if chain.RELEASE in kinds:
                    raise LedgerStateError(MSG_RESERVED_AFTER_RELEASE.format(round=round.pk, dataset=dataset.slug))
                continue  # already reserved: idempotent
            budget = budgets[dataset.pk]
            key, vector = events[dataset.pk]
            projection, spent, limit, requested = _check_one(budget=budget, dataset=dataset, key=key, vector=vector)
            if not projection.epsilon_spent <= limit:
                over.append((dataset, requested, limit - spent, limit, spent))
            todo.append((dataset, budget, key, vector, projection))
        if over:
            dataset, requested, remaining, limit, spent = over[0]
            raise BudgetExceeded(
                dataset,
                requested,
                remaining,
                budget=limit,
                spent=spent,
                datasets={d.slug: {"requested": r, "remaining": rem, "budget": b, "spent": s} for d, r, rem, b, s in over},
            )
        for dataset, budget, key, _vector, projection in todo:
            # A ledger without a GRANT opens with the dataset's budget; the projection above
            # stays valid (a GRANT changes neither the events nor delta nor accountant).
            _open_ledger(budget, dataset, actor)
            ledger.append(
                budget,
                dataset,
                kind=chain.RESERVE,
                projection=projection,
                epsilon_budget=budget.epsilon_budget,
                actor=name,
                round_id=round.pk,
                event=key,
                payload={"plan": round.plan_id, "round_number": round.number},
            )
        if todo:
            heads.sign_heads_after_commit([d.pk for d, *_ in todo])
        return list(
            LedgerEntry.objects.filter(round_id=round.pk, kind=chain.RESERVE, dataset_id__in=list(budgets)).order_by("dataset_id")
        )


def _lock_round_reservations(round) -> tuple[dict, dict[int, set[str]], dict[int, str]]:
    """Lock the budget rows of every dataset this round touched; return their states."""
    from federation.models import Dataset

    dataset_ids = sorted(set(LedgerEntry.objects.filter(round_id=round.pk).values_list("dataset_id", flat=True)))
    datasets = {d.pk: d for d in Dataset.objects.filter(pk__in=dataset_ids)}
    budgets = {pk: ledger.lock_budget(datasets[pk]) for pk in dataset_ids}
    states: dict[int, set[str]] = defaultdict(set)
    events: dict[int, str] = {}
    for dataset_id, kind, event in LedgerEntry.objects.filter(round_id=round.pk).values_list("dataset_id", "kind", "event"):
        states[dataset_id].add(kind)
        if kind == chain.RESERVE:
            events[dataset_id] = event
    return {pk: (datasets[pk], budgets[pk]) for pk in dataset_ids}, states, events


_HEX64 = re.compile(r"[0-9a-f]{64}")


def budget_commit(
    *, round, actor, ticket_hashes: Mapping[int, str] | None = None, datasets: Iterable[int] | None = None
) -> list[LedgerEntry]:
    """COMMIT every open reservation of the round (or of `datasets`, ids, only): the budget
    is spent for good.

    `ticket_hashes` maps a dataset id to the hash of the ticket the coordinator signed for
    it at reservation; each COMMIT carries its dataset's as `payload.ticket_hash`, the entry
    an auditor matches the partner's receipt against (docs/TRUST-FORMATS.md).

    Idempotent (already committed: nothing to do). Raises LedgerStateError when the round
    has no reservation at all (or none on one of `datasets`), or when a reservation to
    commit was released."""
    ticket_hashes = dict(ticket_hashes or {})
    only = None if datasets is None else set(datasets)
    for dataset_id, value in ticket_hashes.items():
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            message = MSG_BAD_TICKET_HASH.format(dataset=dataset_id, value=value)
            raise InvalidBudget(message, fields={"ticket_hashes": [message]})
    name = ledger.actor_name(actor)
    with transaction.atomic():
        locked, states, events = _lock_round_reservations(round)
        if not locked:
            raise LedgerStateError(MSG_NOTHING_RESERVED.format(round=round.pk, action="commit"))
        if only is not None and only - set(locked):
            raise LedgerStateError(MSG_NOTHING_RESERVED.format(round=round.pk, action="commit") + f" (dataset ids {sorted(only - set(locked))})")
        entries = []
        for pk, (dataset, budget) in locked.items():  # in increasing dataset id: the lock order
            kinds = states[pk]
            if only is not None and pk not in only:
                continue
            if chain.COMMIT in kinds:
                continue
            if chain.RELEASE in kinds:
                raise LedgerStateError(MSG_ALREADY_FINAL.format(round=round.pk, dataset=dataset.slug, state="released"))
            entries.append(
                ledger.append(
                    budget,
                    dataset,
                    kind=chain.COMMIT,
                    projection=ledger.project(budget, dataset),
                    epsilon_budget=budget.epsilon_budget,
                    actor=name,
                    round_id=round.pk,
                    event=events[pk],
                    payload={"ticket_hash": ticket_hashes[pk]} if pk in ticket_hashes else {},
                )
            )
        if entries:
            heads.sign_heads_after_commit([e.dataset_id for e in entries])
        return entries


def budget_release(*, round, actor, reason: str, no_update_released: bool) -> list[LedgerEntry]:
    """RELEASE the round's open reservations, giving the budget back.

    Only with proof (ARCHITECTURE.md, Ledger 2): the caller states `no_update_released=True`
    and the round is failed, aborted, blocked or rejected. Otherwise ReleaseRefused and the
    budget stays spent. Idempotent for already released reservations; a committed one
    cannot be released (LedgerStateError)."""
    if no_update_released is not True:
        raise ReleaseRefused(MSG_RELEASE_WITHOUT_PROOF.format(round=round.pk), round=round.pk)
    if not isinstance(reason, str) or not reason.strip():
        raise ReleaseRefused(MSG_RELEASE_NO_REASON.format(round=round.pk), round=round.pk)
    return _release(round=round, actor=actor, states=RELEASABLE_ROUND_STATES, reason=reason.strip())


def _masked_input_senders(round_id: int) -> set[str]:
    """Dataset slugs whose partner's masked input the coordinator received for the round
    (the secure-aggregation state, written under the round's lock as each one arrived)."""
    from federation.models import RoundProtocol

    protocol = RoundProtocol.objects.filter(round_id=round_id).only("config", "state").first()
    if protocol is None:
        return set()
    names = (protocol.config or {}).get("datasets") or {}
    return {names[party] for party in (protocol.state or {}).get("u3") or [] if party in names}


def budget_release_datasets(*, round, actor, reasons: Mapping[int, str], no_update_released: bool) -> list[LedgerEntry]:
    """RELEASE the reservations of some of the round's datasets (`reasons`: dataset id ->
    why), each with its own proof (ARCHITECTURE.md, Ledger 2): the coordinator never
    received that partner's masked input, so no sum and no evaluation holds anything
    computed from its data, whatever happened to the round afterwards (completed too).

    Refused (ReleaseRefused) without `no_update_released=True`, without a reason per
    dataset, while the round is live, or for a dataset whose masked input was received: its
    budget stays spent. Idempotent for an already released reservation; a committed one
    cannot be released (LedgerStateError). Locks every dataset of the round in increasing
    id order, like `budget_commit`, so the two can share one transaction."""
    if no_update_released is not True:
        raise ReleaseRefused(MSG_RELEASE_WITHOUT_PROOF.format(round=round.pk), round=round.pk)
    reasons = dict(reasons)
    if not reasons:
        return []
    for reason in reasons.values():
        if not isinstance(reason, str) or not reason.strip():
            raise ReleaseRefused(MSG_RELEASE_NO_REASON.format(round=round.pk), round=round.pk)
    return _release(
        round=round,
        actor=actor,
        states=(*RELEASABLE_ROUND_STATES, "completed"),
        per_dataset={pk: reason.strip() for pk, reason in reasons.items()},
    )


def _release(*, round, actor, states, reason: str = "", per_dataset: dict[int, str] | None = None) -> list[LedgerEntry]:
    """The one release loop: every open reservation of the round (`reason`), or those of
    `per_dataset` (id -> reason) whose partner's masked input never arrived."""
    from federation.models import TrainingRound

    name = ledger.actor_name(actor)
    with transaction.atomic():
        # The round's state as committed (or as our caller's transaction left it), not as a
        # possibly stale Python object says.
        status = TrainingRound.objects.filter(pk=round.pk).values_list("status", flat=True).first()
        if status not in states:
            raise ReleaseRefused(MSG_RELEASE_ROUND_STATE.format(round=round.pk, status=status), round=round.pk, status=status)
        locked, kinds_of, events = _lock_round_reservations(round)
        nothing = MSG_NOTHING_RESERVED.format(round=round.pk, action="release")
        sent: set[str] = set()
        if per_dataset is None:
            if not locked:
                raise LedgerStateError(nothing)
        else:
            missing = set(per_dataset) - set(locked)
            if missing:
                raise LedgerStateError(nothing + f" (dataset ids {sorted(missing)})")
            sent = _masked_input_senders(round.pk)
        entries = []
        for pk, (dataset, budget) in locked.items():  # in increasing dataset id: the lock order
            if per_dataset is not None:
                if pk not in per_dataset:
                    continue
                if dataset.slug in sent:
                    message = MSG_RELEASE_INPUT_RECEIVED.format(round=round.pk, dataset=dataset.slug)
                    raise ReleaseRefused(message, round=round.pk, dataset=dataset.slug)
            kinds = kinds_of[pk]
            if chain.RELEASE in kinds:
                continue
            if chain.COMMIT in kinds:
                raise LedgerStateError(MSG_ALREADY_FINAL.format(round=round.pk, dataset=dataset.slug, state="committed"))
            payload = {"reason": reason, "no_update_released": True, "round_status": status}
            if per_dataset is not None:
                payload.update(reason=per_dataset[pk], proof="no_masked_input")
            key = events[pk]
            entries.append(
                ledger.append(
                    budget,
                    dataset,
                    kind=chain.RELEASE,
                    projection=ledger.project(budget, dataset, remove=(key, acc.rdp_vector_from_json(key))),
                    epsilon_budget=budget.epsilon_budget,
                    actor=name,
                    round_id=round.pk,
                    event=key,
                    payload=payload,
                )
            )
        if entries:
            heads.sign_heads_after_commit([e.dataset_id for e in entries])
        return entries
