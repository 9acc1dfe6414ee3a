"""Ledger guards that need no database."""

import pytest

from accounting import ledger
from accounting.models import LedgerEntry


class FakeDataset:
    pk = 1
    slug = "x"


def test_appending_outside_a_transaction_is_refused():
    # No django_db mark: we are not in a transaction, and the guard fires before any query.
    with pytest.raises(RuntimeError, match="inside transaction.atomic"):
        ledger.lock_budget(FakeDataset())


def test_unknown_entry_kind_is_refused():
    with pytest.raises(ValueError):
        ledger.build_entry(
            ledger.DatasetBudget(dataset_id=1, chain_slug="x", cum_rdp=[]),
            dataset_slug="x",
            kind="REFUND",
            projection=None,
            epsilon_budget=1.0,
            actor="a",
        )


def test_actor_names():
    class U:
        username = "alice"

        def get_username(self):
            return self.username

    assert ledger.actor_name(None) == "system"
    assert ledger.actor_name("") == "system"
    assert ledger.actor_name("bob") == "bob"
    assert ledger.actor_name(U()) == "alice"
    assert LedgerEntry.Kind.values == ["GRANT", "RESERVE", "COMMIT", "RELEASE"]
