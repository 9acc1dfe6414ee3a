"""Database triggers that refuse UPDATE and DELETE on the append-only ledger tables.

ARCHITECTURE.md, Ledger 3: the models refuse update and delete, and so does the database, for
anyone who goes around the models (raw SQL, a database console, another program). Both
backends fedgov supports get them; the migration installs them and uninstalling them is a
deliberate act (the tamper tests do it to show the hash chain catches what then slips by).

TRUNCATE and DROP need the table owner's rights, like dropping a trigger. Run the application
with a database role that does not own the tables (see the README) and only the migration
role can do either.
"""

from __future__ import annotations

LEDGER_TABLES = ("accounting_ledgerentry", "accounting_signedhead")
RECEIPT_TABLES = ("accounting_receipt",)  # the 0003 migration's table, protected alike
PROTECTED_TABLES = LEDGER_TABLES + RECEIPT_TABLES

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION accounting_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
"""


def _trigger_name(table: str, op: str) -> str:
    return f"{table}_no_{op.lower()}"


def install_sql(vendor: str, tables: tuple[str, ...] = PROTECTED_TABLES) -> list[str]:
    """Statements creating the triggers on `tables` (each migration passes the tables it knows)."""
    statements: list[str] = []
    if vendor == "postgresql":
        statements.append(_PG_FUNCTION)
    for table in tables:
        for op in ("UPDATE", "DELETE"):
            name = _trigger_name(table, op)
            if vendor == "sqlite":
                statements.append(
                    f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
                )
            elif vendor == "postgresql":
                statements.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                statements.append(
                    f"CREATE TRIGGER {name} BEFORE {op} ON {table} FOR EACH ROW EXECUTE FUNCTION accounting_refuse_change()"
                )
            else:
                raise NotImplementedError(f"no append-only triggers for database vendor {vendor!r}")
    return statements


def uninstall_sql(vendor: str, tables: tuple[str, ...] = PROTECTED_TABLES) -> list[str]:
    statements: list[str] = []
    for table in tables:
        for op in ("UPDATE", "DELETE"):
            name = _trigger_name(table, op)
            if vendor == "sqlite":
                statements.append(f"DROP TRIGGER IF EXISTS {name}")
            elif vendor == "postgresql":
                statements.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    if vendor == "postgresql" and set(LEDGER_TABLES) <= set(tables):
        statements.append("DROP FUNCTION IF EXISTS accounting_refuse_change()")
    return statements


class TriggerSet:
    """One set of database triggers: the only installer in fedgov, shared by the ledger's
    append-only triggers (`APPEND_ONLY`, below) and the governance guards
    (federation/triggers.py, `GOVERNANCE`). `install_sql(vendor)` / `uninstall_sql(vendor)` give
    the statements (the migrations run the same ones); `names` are the triggers it creates."""

    def __init__(self, *, install_sql, uninstall_sql, names) -> None:
        self.install_sql = install_sql
        self.uninstall_sql = uninstall_sql
        self.names = frozenset(names)

    def install(self, connection) -> None:
        _execute(connection, self.install_sql(connection.vendor))

    def uninstall(self, connection) -> None:
        _execute(connection, self.uninstall_sql(connection.vendor))

    def installed(self, connection) -> set[str]:
        """Names of this set's triggers present in the database (for tests and `verify_ledger`)."""
        return present(connection) & self.names

    def expected(self) -> set[str]:
        return set(self.names)


def _execute(connection, statements: list[str]) -> None:
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def present(connection) -> set[str]:
    """Names of every user trigger in the database (the catalogue read of both backends)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        elif connection.vendor == "postgresql":
            cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        else:
            return set()
        return {row[0] for row in cursor.fetchall()}


APPEND_ONLY = TriggerSet(
    install_sql=install_sql,
    uninstall_sql=uninstall_sql,
    names=(_trigger_name(t, op) for t in PROTECTED_TABLES for op in ("UPDATE", "DELETE")),
)
