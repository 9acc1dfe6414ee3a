"""Code that runs in child processes (multiprocessing, spawn): each sets Django up itself
against the database the test shares with it. Importable, no test collection here."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SharedDB:
    """What a child needs to reach the test's database and the coordinator key."""

    database: dict
    var_dir: str
    key_file: str
    settings: tuple = ()  # (name, value) pairs to override


def setup_django(shared: SharedDB) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "fedgov.settings_test"
    os.environ["FEDGOV_VAR_DIR"] = shared.var_dir
    os.environ["FEDGOV_LEDGER_KEY_FILE"] = shared.key_file
    from django.conf import settings

    settings.DATABASES["default"].update(shared.database)
    for name, value in shared.settings:
        setattr(settings, name, value)
    import django

    django.setup()


def race_worker(shared: SharedDB, worker: int, round_ids: list[int], barrier, results) -> None:
    """Reserve each round in turn, reporting ("ok" | "exceeded" | "error: ...") per round."""
    setup_django(shared)
    from accounting.errors import BudgetExceeded
    from accounting.services.budget import budget_reserve
    from federation.models import TrainingRound

    rounds = [TrainingRound.objects.get(pk=pk) for pk in round_ids]
    barrier.wait(timeout=120)
    started = time.monotonic()
    out = []
    for r in rounds:
        try:
            budget_reserve(round=r, actor=f"racer-{worker}")
            out.append((r.pk, "ok"))
        except BudgetExceeded:
            out.append((r.pk, "exceeded"))
        except Exception as e:  # noqa: BLE001 (reported to the parent, which fails the test)
            out.append((r.pk, f"error: {type(e).__name__}: {e}"))
    if os.environ.get("FEDGOV_RACE_TIMING"):
        print(f"worker {worker}: {len(out)} attempts in {time.monotonic() - started:.1f} s", flush=True)
    results.put((worker, out))


def reserve_then_hang(shared: SharedDB, round_id: int, inside_transaction: bool, ready) -> None:
    """Reserve, tell the parent, then wait to be SIGKILLed: either after the reservation
    committed (a worker dying mid-round) or while its transaction is still open."""
    setup_django(shared)
    from django.db import transaction

    from accounting.services.budget import budget_reserve
    from federation.models import TrainingRound

    r = TrainingRound.objects.get(pk=round_id)
    if inside_transaction:
        with transaction.atomic():
            budget_reserve(round=r, actor="doomed")
            ready.put("reserved, transaction open")
            time.sleep(600)
    else:
        budget_reserve(round=r, actor="doomed")
        ready.put("reserved and committed")
        time.sleep(600)
