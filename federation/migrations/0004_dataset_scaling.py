# Declared public scaling of a dataset's features: per-feature transforms and centring.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("federation", "0003_protocol_rows"),
    ]

    operations = [
        migrations.AddField(
            model_name="dataset",
            name="feature_transforms",
            field=models.JSONField(
                blank=True, default=dict, help_text="Public transform per feature before scaling: {feature: log1p | sqrt}."
            ),
        ),
        migrations.AddField(
            model_name="dataset",
            name="centred",
            field=models.BooleanField(default=False, help_text="Scale every feature to [-1, 1] instead of [0, 1]."),
        ),
    ]
