"""An agreement's parties and auditors are signed terms: the database refuses adding, removing
or re-pointing them once the current version has a signature (federation/triggers.py,
`_member_guards`; ARCHITECTURE.md, Trust 4)."""

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
        ("federation", "0016_i18n_labels"),
    ]

    operations = [
        migrations.RunPython(install, uninstall),
    ]
