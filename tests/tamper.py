"""Writing behind fedgov's back: what a compromised database (or a test setting up a state
directly) does. Lifts the governance guards (model and trigger) for one UPDATE, so tests can
show that the governance checks still catch a row changed this way."""

from __future__ import annotations

from contextlib import contextmanager

from django.db import connection, models, transaction


@contextmanager
def triggers_lifted():
    """The database's governance triggers off for the block (the model guards stay on)."""
    from federation import triggers

    had = triggers.GOVERNANCE.installed(connection)
    if had:
        triggers.GOVERNANCE.uninstall(connection)
    try:
        with transaction.atomic():  # a refused write rolls back alone; the guards go back either way
            yield
    finally:
        if had:
            triggers.GOVERNANCE.install(connection)


def force_update(model, pk, **fields) -> int:
    with triggers_lifted():
        return models.QuerySet(model=model).filter(pk=pk).update(**fields)
