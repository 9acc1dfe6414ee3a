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
        had = triggers.APPEND_ONLY.installed(connection) if connection.vendor == "sqlite" else set()
        had_guards = guards.GOVERNANCE.installed(connection) if connection.vendor == "sqlite" else set()
        if had:
            triggers.APPEND_ONLY.uninstall(connection)
        if had_guards:
            guards.GOVERNANCE.uninstall(connection)
        try:
            return super().handle(**options)
        finally:
            if had:
                triggers.APPEND_ONLY.install(connection)
            if had_guards:
                guards.GOVERNANCE.install(connection)
