"""The chaos soak's short form (bench/chaos.py, #16): a plan of five rounds on the real stack
while the Celery worker, an agent, beat and Redis (and a gunicorn worker, when the plan lasts
long enough) are SIGKILLed about every three seconds once a first round has completed and come back as a supervisor would bring
them back. The plan completes, every try completed or aborted, the ledger verifies and no
budget is exceeded; then the same checks fail on a ledger changed behind the chain's back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from django.db import connection

from accounting.models import LedgerEntry
from tests.tamper import force_update

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("stack")]

ROOT = Path(__file__).resolve().parents[2]


def load_chaos():
    spec = importlib.util.spec_from_file_location("bench_chaos", ROOT / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_plan_survives_processes_killed_at_random_and_the_checks_catch_a_broken_ledger(tmp_path):
    chaos = load_chaos()
    # Seed 4 kills, in this order: the worker, an agent, beat, Redis, a gunicorn worker.
    # A kill about every second, one per target (the killer cycles through all five before
    # repeating one), and enough rounds that the plan is still running when the fifth comes
    # on a quiet machine too (an untouched round takes about 0.6 s there).
    report = chaos.run_chaos(rounds=10, seed=4, kill_interval=1.0, work=tmp_path, phase_timeout=10, calm_rounds=1, max_kills=5)
    text = chaos.render(report)
    print(text)
    assert report.ok, text
    killed = {k.target for k in report.kills}
    assert {"worker", "agent", "beat"} <= killed, text
    assert all(k.pid for k in report.kills if k.target != "web-worker"), text
    assert sum(t["status"] == "completed" for t in report.tries) == 10
    assert report.median_round is not None and any(k.cost is not None for k in report.kills), text
    assert "| 1 |" in text and "Checks:" in text

    # The same checks after writes behind the application's back: a ledger entry whose spent
    # epsilon is rewritten (the chain no longer verifies), and a dataset's budget cut below what
    # was spent (exceeded). Both fail the report.
    from accounting import triggers
    from federation.models import Dataset, TrainingPlan

    plan = TrainingPlan.objects.get()
    dataset = plan.datasets.order_by("id").last()
    force_update(Dataset, dataset.pk, epsilon_budget=report.max_spent / 2)
    entry = LedgerEntry.objects.filter(dataset=plan.datasets.order_by("id").first()).order_by("seq").last()
    triggers.APPEND_ONLY.uninstall(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {LedgerEntry._meta.db_table} SET epsilon_spent_after = %s WHERE id = %s", [2 * entry.epsilon_budget, entry.pk]
            )
    finally:
        triggers.APPEND_ONLY.install(connection)
    chaos.check(report, plan)
    assert not report.checks["the ledger verifies"] and not report.checks["no budget exceeded"] and not report.ok
