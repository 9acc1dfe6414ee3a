"""A plan keeps the planner's explanation of its schedule (issue #15 item 1).

federation_trainingplan is a guarded table: on SQLite, adding a column rebuilds it, which a
trigger naming another table breaks, so the triggers are dropped first and installed again
after (federation/triggers.py; see 0009_governance_guards).
"""

from django.db import migrations, models


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
        ("federation", "0010_member_removed"),
    ]

    operations = [
        migrations.RunPython(uninstall, install),
        migrations.AddField(
            model_name="trainingplan",
            name="explanation",
            field=models.TextField(
                blank=True,
                default="",
                help_text="Why the schedule is what it is: the planner's reasons, and the values set by hand.",
            ),
        ),
        migrations.RunPython(install, uninstall),
    ]
