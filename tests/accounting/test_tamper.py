"""Tampering behind the application's back: triggers refuse it, the hash chain and the
recomputed composition catch what gets past them (ARCHITECTURE.md, Ledger 3)."""

from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, IntegrityError, connection, transaction

from accounting import accountant as acc
from accounting import audit, chain, dp_events, ledger, triggers
from accounting.models import DatasetBudget, LedgerEntry

pytestmark = pytest.mark.django_db


def sql(statement, params=()):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.fixture
def triggers_dropped(history):
    triggers.APPEND_ONLY.uninstall(connection)
    assert not triggers.APPEND_ONLY.installed(connection)
    yield history
    triggers.APPEND_ONLY.install(connection)


def test_the_migration_installed_the_triggers(db):
    assert triggers.APPEND_ONLY.installed(connection) == triggers.APPEND_ONLY.expected()


@pytest.mark.parametrize("table", ["accounting_ledgerentry", "accounting_signedhead"])
def test_raw_sql_update_and_delete_are_refused(history, table):
    before = list(LedgerEntry.objects.values_list("id", "entry_hash"))
    for statement in (f"UPDATE {table} SET seq = seq + 100", f"DELETE FROM {table}"):
        with pytest.raises(DatabaseError, match="append-only"):
            with transaction.atomic():
                sql(statement)
    assert list(LedgerEntry.objects.values_list("id", "entry_hash")) == before
    assert all(r.ok for r in audit.verify_all())


def mutations(h):
    other_event = dp_events.canonical_json(dp_events.round_event(0.5, 1.0, 3))
    when = connection.ops.adapt_datetimefield_value(datetime(2020, 1, 1, tzinfo=UTC))
    return {
        "kind": "RELEASE",
        "round_id": h.spare.pk,
        "event": other_event,
        "accountant": "pld",
        "delta": 2e-5,
        "epsilon_budget": 100.0,
        "epsilon_spent_after": 0.123,
        "actor": "mallory",
        "created_at": when,
        "payload": '{"note":"x"}',
        "prev_hash": "f" * 64,
        "entry_hash": "0" * 64,
        "dataset_slug": "org-z-records",
    }


FIELDS = [
    "kind",
    "round_id",
    "event",
    "accountant",
    "delta",
    "epsilon_budget",
    "epsilon_spent_after",
    "actor",
    "created_at",
    "payload",
    "prev_hash",
    "entry_hash",
    "dataset_slug",
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("seq", [1, 4, 8])
def test_changing_any_field_of_any_entry_fails_verification_naming_it(triggers_dropped, field, seq):
    h = triggers_dropped
    value = mutations(h)[field]
    if field == "kind" and seq == 4:
        value = "RESERVE"
    try:
        with transaction.atomic():
            sql(f"UPDATE accounting_ledgerentry SET {field} = %s WHERE dataset_id = %s AND seq = %s", [value, h.dataset.pk, seq])
    except IntegrityError:
        # The database's own constraints refuse this one (e.g. a GRANT naming a round).
        assert (field, seq) in {("kind", 1), ("round_id", 1)}
        return
    result = audit.verify_dataset(h.dataset)
    assert not result.ok
    assert result.bad_seq == seq, str(result.error)
    # The other datasets' chains are untouched and still verify.
    assert all(audit.verify_dataset(d).ok for d in h.cast.datasets[1:])


def test_verify_ledger_command_names_the_bad_entry(triggers_dropped):
    h = triggers_dropped
    call_command("verify_ledger")  # clean: no exception
    sql("UPDATE accounting_ledgerentry SET epsilon_spent_after = 0.5 WHERE dataset_id = %s AND seq = 7", [h.dataset.pk])
    with pytest.raises(CommandError) as excinfo:
        call_command("verify_ledger")
    assert excinfo.value.returncode == 1
    assert f"dataset {h.dataset.slug}: entry #7" in str(excinfo.value)
    call_command("verify_ledger", dataset=h.cast.datasets[1].slug)  # another chain is fine


@pytest.mark.parametrize("seq", [1, 4, 7])
def test_deleting_an_entry_fails_verification_naming_it(triggers_dropped, seq):
    h = triggers_dropped
    sql("DELETE FROM accounting_ledgerentry WHERE dataset_id = %s AND seq = %s", [h.dataset.pk, seq])
    result = audit.verify_dataset(h.dataset)
    assert not result.ok and result.bad_seq == seq, str(result.error)


def test_deleting_the_last_entry_is_caught_by_its_signed_head(triggers_dropped):
    h = triggers_dropped
    sql("DELETE FROM accounting_ledgerentry WHERE dataset_id = %s AND seq = 8", [h.dataset.pk])
    result = audit.verify_dataset(h.dataset)
    assert not result.ok and result.bad_seq == 8, str(result.error)


@pytest.mark.parametrize(("a", "b"), [(3, 5), (1, 2), (7, 8)])
def test_reordering_two_entries_fails_verification_naming_the_first(triggers_dropped, a, b):
    h = triggers_dropped
    swap = "UPDATE accounting_ledgerentry SET seq = %s WHERE dataset_id = %s AND seq = %s"
    sql(swap, [1000, h.dataset.pk, a])
    sql(swap, [a, h.dataset.pk, b])
    sql(swap, [b, h.dataset.pk, 1000])
    result = audit.verify_dataset(h.dataset)
    assert not result.ok and result.bad_seq == a, str(result.error)


def rehash_from(dataset, seq):
    """What an attacker with write access does: fix every hash after an edit."""
    prev = None
    for entry in LedgerEntry.objects.filter(dataset=dataset).order_by("seq"):
        if entry.seq < seq:
            prev = entry.entry_hash
            continue
        doc = entry.document()
        doc["prev_hash"] = prev
        new = chain.compute_entry_hash(doc)
        sql(
            "UPDATE accounting_ledgerentry SET prev_hash = %s, entry_hash = %s WHERE id = %s",
            [prev, new, entry.pk],
        )
        prev = new
    DatasetBudget.objects.filter(dataset=dataset).update(head_hash=prev)


def test_a_consistently_rehashed_edit_is_caught_by_the_recomputed_epsilon(triggers_dropped):
    h = triggers_dropped
    sql(
        "UPDATE accounting_ledgerentry SET epsilon_spent_after = epsilon_spent_after / 2 WHERE dataset_id = %s AND seq = 7",
        [h.dataset.pk],
    )
    rehash_from(h.dataset, 7)
    DatasetBudget.objects.filter(dataset=h.dataset).update(
        epsilon_spent=LedgerEntry.objects.get(dataset=h.dataset, seq=8).epsilon_spent_after
    )
    result = audit.verify_dataset(h.dataset)
    assert not result.ok and result.bad_seq == 7
    assert "recomputed composition" in result.error.reason


def test_a_rehashed_cheaper_event_is_caught_by_the_signed_head(triggers_dropped):
    # Swap round 3's event for a cheaper one and recompute every epsilon and hash: the
    # chain is now self-consistent, but it no longer matches the coordinator's signed head.
    h = triggers_dropped
    cheap = dp_events.round_event(0.001, 5.0, 1)
    key = dp_events.canonical_json(cheap)
    sql("UPDATE accounting_ledgerentry SET event = %s WHERE dataset_id = %s AND seq IN (7, 8)", [key, h.dataset.pk])
    cum = acc.compose_rdp([LedgerEntry.objects.get(dataset=h.dataset, seq=2).event, key])
    eps = acc.epsilon_from_rdp(cum, h.dataset.delta)
    sql("UPDATE accounting_ledgerentry SET epsilon_spent_after = %s WHERE dataset_id = %s AND seq IN (7, 8)", [eps, h.dataset.pk])
    rehash_from(h.dataset, 7)
    DatasetBudget.objects.filter(dataset=h.dataset).update(epsilon_spent=eps, cum_rdp=acc.rdp_to_json(cum))
    result = audit.verify_dataset(h.dataset)
    assert not result.ok and result.bad_seq == 8
    assert "signed head" in result.error.reason


def test_a_forged_overspending_reservation_is_reported(triggers_dropped):
    h = triggers_dropped
    budget = DatasetBudget.objects.get(dataset=h.dataset)
    greedy = dp_events.canonical_json(dp_events.round_event(1.0, 0.5, 1000))
    projection = ledger.project(budget, h.dataset, add=(greedy, acc.rdp_vector_from_json(greedy)))
    entry = ledger.build_entry(
        budget,
        dataset_slug=budget.chain_slug,
        kind="RESERVE",
        projection=projection,
        epsilon_budget=budget.epsilon_budget,
        actor="mallory",
        round_id=h.spare.pk,
        event=greedy,
    )
    LedgerEntry.objects.bulk_create([entry])
    ledger.advance(budget, entry, projection)
    budget.save()
    result = audit.verify_dataset(h.dataset)
    assert not result.ok and result.bad_seq == 9
    assert "overspends" in result.error.reason


def test_tampering_with_the_cached_budget_row_is_reported(history):
    DatasetBudget.objects.filter(dataset=history.dataset).update(epsilon_spent=0.0)
    result = audit.verify_dataset(history.dataset)
    assert not result.ok and "stored budget state" in result.error.reason
    with pytest.raises(CommandError, match="stored budget state"):
        call_command("verify_ledger", dataset=history.dataset.slug)
