"""Database triggers refusing UPDATE and DELETE on the ledger tables (ARCHITECTURE.md, Ledger 3).

SQLite and PostgreSQL each get their own SQL (chosen by connection.vendor); reversing the
migration drops them. The SQL lives in accounting/triggers.py so tests and the `flush`
override use the very same statements.
"""

from django.db import migrations


def install(apps, schema_editor):
    from accounting import triggers

    for sql in triggers.install_sql(schema_editor.connection.vendor, triggers.LEDGER_TABLES):
        schema_editor.execute(sql, params=None)


def uninstall(apps, schema_editor):
    from accounting import triggers

    for sql in triggers.uninstall_sql(schema_editor.connection.vendor, triggers.LEDGER_TABLES):
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("accounting", "0001_initial")]

    operations = [migrations.RunPython(install, uninstall)]
