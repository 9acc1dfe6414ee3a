from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _reinstall_guards(sender, using="default", plan=None, **kwargs) -> None:
    """SQLite rebuilds a table to alter it, and the rebuild drops the table's triggers: after
    every migrate, put the governance guards back if their migration has run (idempotent)."""
    from django.db import connections
    from django.db.migrations.recorder import MigrationRecorder

    from . import triggers

    connection = connections[using]
    if connection.vendor not in ("sqlite", "postgresql"):
        return
    recorder = MigrationRecorder(connection)
    if not recorder.has_table() or ("federation", "0006_governance_guards") not in recorder.applied_migrations():
        return
    if triggers.GOVERNANCE.installed(connection) != triggers.GOVERNANCE.expected():
        triggers.GOVERNANCE.install(connection)


class FederationConfig(AppConfig):
    name = "federation"
    verbose_name = "Federation governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_reinstall_guards, sender=self, dispatch_uid="federation_reinstall_guards")
        from . import member_guards, token_cache, visibility_cache

        member_guards.connect_signals()
        token_cache.connect_signals()
        visibility_cache.connect_signals()
