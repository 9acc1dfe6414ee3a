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


@contextmanager
def membership_unguarded():
    """An agreement's parties and auditors writable for the block, as in a draft: the model
    guards' signals disconnected and the database's triggers off. For tests of what reacts to
    such a change (caches, access), not of governance (tests/federation/test_member_guards.py)."""
    from django.contrib.auth import get_user_model
    from django.db.models.signals import m2m_changed, pre_delete, pre_save

    from federation.models import Agreement, AgreementParty

    disconnected = [
        pre_save.disconnect(sender=AgreementParty, dispatch_uid="member_guards_party_saved"),
        pre_delete.disconnect(sender=AgreementParty, dispatch_uid="member_guards_party_deleted"),
        m2m_changed.disconnect(sender=Agreement.auditors.through, dispatch_uid="member_guards_auditors"),
        pre_delete.disconnect(sender=get_user_model(), dispatch_uid="member_guards_user_deleted"),
    ]
    assert all(disconnected), "the member guards were not connected"
    try:
        with triggers_lifted():
            yield
    finally:
        from federation import member_guards

        member_guards.connect_signals()


def force_update(model, pk, **fields) -> int:
    with triggers_lifted():
        return models.QuerySet(model=model).filter(pk=pk).update(**fields)
