"""Database triggers guarding governance rows (ARCHITECTURE.md, Trust 4).

Signed terms, a plan's parameters once it has a round, a budgeted dataset's delta, the round
state machine and who may approve a round: SQLite and PostgreSQL each get their own SQL,
from federation/triggers.py (the flush command and the tests use the very same statements).
Reversing the migration drops them.

A later migration that alters a guarded table on SQLite (which rebuilds the table) must drop
the triggers first and install them again after (RunPython with `triggers.GOVERNANCE.uninstall` /
`triggers.GOVERNANCE.install`): a trigger naming another table breaks SQLite's rename step.
"""

from django.db import migrations


def install(apps, schema_editor):
    from federation import triggers

    for sql in triggers.install_sql(schema_editor.connection.vendor):
        schema_editor.execute(sql, params=None)


def uninstall(apps, schema_editor):
    from federation import triggers

    for sql in triggers.uninstall_sql(schema_editor.connection.vendor):
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("federation", "0008_round_tickets"),
        ("accounting", "0002_append_only_triggers"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
