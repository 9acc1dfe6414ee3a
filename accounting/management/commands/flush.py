"""`flush` that can empty the append-only ledger tables.

Django's flush (also what TransactionTestCase and pytest-django's transactional_db run
between tests) deletes every row; on SQLite that is a DELETE, which the ledger's triggers
refuse. Flushing a database is a deliberate act of an operator who could drop the triggers
anyway, so on SQLite this command drops them (and the governance guards of
federation/triggers.py, which refuse deleting a plan's datasets), flushes, and puts them back. PostgreSQL
flushes with TRUNCATE, which row triggers do not see, so there it changes nothing.
"""

from django.core.management.commands.flush import Command as DjangoFlush
from django.db import connections


class Command(DjangoFlush):
    def handle(self, **options):
        from accounting import triggers
        from federation import triggers as guards

        connection = connections[options["database"]]
        had = triggers.installed(connection) if connection.vendor == "sqlite" else set()
        had_guards = guards.installed(connection) if connection.vendor == "sqlite" else set()
        if had:
            triggers.uninstall(connection)
        if had_guards:
            guards.uninstall(connection)
        try:
            return super().handle(**options)
        finally:
            if had:
                triggers.install(connection)
            if had_guards:
                guards.install(connection)
