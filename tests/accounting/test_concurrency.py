"""Real processes racing for the same budgets, and processes killed mid-round.

Each child process sets Django up itself against the test's database: the live test database
on PostgreSQL or a file-based SQLite; when the SQLite test database is in memory (the
default) the test publishes it to a file with SQLite's backup API, lets the children work on
the file, and pulls the result back before checking.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import signal
import sqlite3
from collections import Counter

import pytest
from django.conf import settings
from django.db import connection
from dp_accounting.rdp import RdpAccountant

from accounting import accountant as acc
from accounting import audit, dp_events, errors, heads, selectors
from accounting.models import LedgerEntry
from accounting.services import budget as services
from federation.models import TrainingRound
from tests.accounting import procs
from tests.accounting.helpers import make_rounds, set_status
from tests.factories import build_cast

WORKERS = 8
ATTEMPTS = 200
DISTINCT_ROUNDS = 150  # the first 50 rounds are attempted twice, by different processes
FITTING_ROUNDS = 40

spawn = multiprocessing.get_context("spawn")


class Shared:
    def __init__(self, tmp_path):
        self.copy = connection.vendor == "sqlite" and connection.is_in_memory_db()
        db = {k: connection.settings_dict[k] for k in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")}
        if self.copy:
            self.path = tmp_path / "shared.sqlite3"
            db["NAME"] = str(self.path)
        heads.signing_key()  # one key, created before the children look for it
        self.spec = procs.SharedDB(database=db, var_dir=str(settings.VAR_DIR), key_file=str(heads.key_path()))

    def publish(self) -> None:
        if self.copy:
            connection.ensure_connection()
            dest = sqlite3.connect(self.path)
            connection.connection.backup(dest)
            dest.close()

    def pull(self) -> None:
        if self.copy:
            src = sqlite3.connect(self.path)
            src.backup(connection.connection)
            src.close()


@pytest.fixture
def shared(transactional_db, tmp_path):
    return Shared(tmp_path)


def library_epsilon(event_texts, delta):
    """dp-accounting's own composition, from scratch (identical events composed with a count)."""
    accountant = RdpAccountant()
    for text, count in Counter(event_texts).items():
        accountant.compose(dp_events.event_from_json(text), count)
    return accountant.get_epsilon(delta)


def binding_budget(cast):
    """A budget that fits exactly FITTING_ROUNDS rounds on dataset B (the fewest records,
    so the highest sampling rate): halfway between the cost of 40 and of 41 rounds."""
    b = cast.datasets[1]
    vec = acc.rdp_vector(dp_events.dataset_round_event(cast.plan.dp_params_for(b)))
    low = acc.epsilon_from_rdp(FITTING_ROUNDS * vec, b.delta)
    high = acc.epsilon_from_rdp((FITTING_ROUNDS + 1) * vec, b.delta)
    return (low + high) / 2


def test_racing_processes_never_overspend_and_refusals_leave_nothing(shared):
    cast = build_cast(agreement_terms={"max_epsilon_budget": 100.0, "max_epsilon_per_round": 100.0}, budget=50.0)
    budget = binding_budget(cast)
    for d in cast.datasets:
        type(d).objects.filter(pk=d.pk).update(epsilon_budget=budget)
        d.refresh_from_db()
        services.budget_grant(dataset=d, epsilon_budget=budget, actor=cast.admin)
    rounds = make_rounds(cast.plan, DISTINCT_ROUNDS)
    attempts = [r.pk for r in rounds] + [r.pk for r in rounds[: ATTEMPTS - DISTINCT_ROUNDS]]
    per_worker = [attempts[i::WORKERS] for i in range(WORKERS)]
    rng = random.Random(7)
    for ids in per_worker:
        rng.shuffle(ids)
    shared.publish()

    barrier, results = spawn.Barrier(WORKERS), spawn.Queue()
    workers = [
        spawn.Process(target=procs.race_worker, args=(shared.spec, i, per_worker[i], barrier, results)) for i in range(WORKERS)
    ]
    for p in workers:
        p.start()
    outcomes: dict[int, list[str]] = {}
    try:
        for _ in range(WORKERS):
            _, out = results.get(timeout=300)
            for round_id, outcome in out:
                outcomes.setdefault(round_id, []).append(outcome)
    finally:
        for p in workers:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    shared.pull()

    flat = [o for os_ in outcomes.values() for o in os_]
    assert len(flat) == ATTEMPTS
    assert not [o for o in flat if o.startswith("error")], [o for o in flat if o.startswith("error")][:3]
    reserved_rounds = {rid for rid, os_ in outcomes.items() if "ok" in os_}
    refused_rounds = {rid for rid, os_ in outcomes.items() if "ok" not in os_}
    # Only some fit: exactly as many as the composition allows, never one more.
    assert len(reserved_rounds) == FITTING_ROUNDS
    assert len(refused_rounds) == DISTINCT_ROUNDS - FITTING_ROUNDS
    for d in cast.datasets:
        entries = LedgerEntry.objects.filter(dataset=d, kind="RESERVE")
        # Every refused attempt left nothing, on every dataset (all or nothing).
        assert set(entries.values_list("round_id", flat=True)) == reserved_rounds
        assert entries.count() == FITTING_ROUNDS  # one RESERVE per round, duplicates were no-ops
        # The composed reserved events, recomputed from scratch by dp-accounting, fit.
        spent = library_epsilon(list(entries.values_list("event", flat=True)), d.delta)
        assert spent <= budget
        assert selectors.dataset_epsilon_spent(dataset=d) == pytest.approx(spent, rel=1e-9)
        assert selectors.open_reservations(dataset=d).count() == FITTING_ROUNDS
    assert not LedgerEntry.objects.filter(round_id__in=refused_rounds).exists()
    results_ = audit.verify_all()
    assert all(r.ok for r in results_), [r.line() for r in results_]


@pytest.mark.postgres
def test_rounds_over_overlapping_dataset_sets_never_deadlock(shared):
    """Rounds over {A,B}, {B,C} and {C,A} racing: without the fixed lock order two of them
    could each hold one row and wait for the other's. Needs PostgreSQL's row locks."""
    if connection.vendor != "postgresql":
        pytest.skip("row-level locks: run with DATABASE_URL=postgres://...")
    cast = build_cast(agreement_terms={"max_epsilon_budget": 1000.0, "max_epsilon_per_round": 100.0}, budget=1000.0)
    a, b, c = cast.datasets
    pairs = [(a, b), (b, c), (c, a)]
    rounds = []
    for i in range(60):
        rounds += make_rounds(cast.plan, 1, datasets=pairs[i % 3])
    shared.publish()
    ids = [r.pk for r in rounds]
    barrier, results = spawn.Barrier(6), spawn.Queue()
    workers = [spawn.Process(target=procs.race_worker, args=(shared.spec, i, ids[i::6], barrier, results)) for i in range(6)]
    for p in workers:
        p.start()
    outs = []
    try:
        for _ in workers:
            outs += results.get(timeout=300)[1]
    finally:
        for p in workers:
            p.join(timeout=60)
    assert [o for _, o in outs] == ["ok"] * len(rounds), [o for _, o in outs if o != "ok"][:3]
    assert all(r.ok for r in audit.verify_all())


def run_and_kill(shared, round_id: int, *, inside_transaction: bool) -> str:
    ready = spawn.Queue()
    child = spawn.Process(target=procs.reserve_then_hang, args=(shared.spec, round_id, inside_transaction, ready))
    child.start()
    try:
        message = ready.get(timeout=120)
    except queue.Empty:
        child.kill()
        raise
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    return message


def test_a_process_killed_between_reserve_and_commit_leaves_its_reservation_spent(shared):
    cast = build_cast()
    before, doomed, later = make_rounds(cast.plan, 3)
    services.budget_reserve(round=before, actor=cast.admin)
    services.budget_commit(round=before, actor=cast.admin)
    shared.publish()

    assert run_and_kill(shared, doomed.pk, inside_transaction=False) == "reserved and committed"
    shared.pull()

    # The reservation survived its process: visible as open, and counted as spent.
    assert selectors.round_reservation_state(round=doomed) == {d.slug: "reserved" for d in cast.datasets}
    for d in cast.datasets:
        assert list(selectors.open_reservations(dataset=d).values_list("round_id", flat=True)) == [doomed.pk]
        events = list(LedgerEntry.objects.filter(dataset=d, kind="RESERVE").values_list("event", flat=True))
        assert len(events) == 2
        assert selectors.dataset_epsilon_spent(dataset=d) == pytest.approx(library_epsilon(events, d.delta), rel=1e-9)
    check = {r.dataset.slug: r for r in services.budget_check(round=later)}
    for d in cast.datasets:
        assert check[d.slug].spent == pytest.approx(selectors.dataset_epsilon_spent(dataset=d))
    assert all(r.ok for r in audit.verify_all())

    # Whoever cleans up cannot show that no update left a partner: the budget stays spent.
    set_status(doomed, TrainingRound.Status.FAILED)
    with pytest.raises(errors.ReleaseRefused):
        services.budget_release(round=doomed, actor=cast.admin, reason="worker died", no_update_released=False)
    services.budget_commit(round=doomed, actor=cast.admin)
    assert not selectors.open_reservations().exists()
    assert all(r.ok for r in audit.verify_all())


def test_a_process_killed_inside_its_reserve_transaction_leaves_nothing_and_no_lock(shared):
    cast = build_cast()
    doomed, other = make_rounds(cast.plan, 2)
    shared.publish()
    counts = {d.pk: LedgerEntry.objects.filter(dataset=d).count() for d in cast.datasets}

    assert run_and_kill(shared, doomed.pk, inside_transaction=True) == "reserved, transaction open"
    shared.pull()

    assert not LedgerEntry.objects.filter(round=doomed).exists()
    assert {d.pk: LedgerEntry.objects.filter(dataset=d).count() for d in cast.datasets} == counts
    # The dead process's locks went with it: the next reservation goes through at once.
    services.budget_reserve(round=other, actor=cast.admin)
    assert all(r.ok for r in audit.verify_all())
