"""The queue over a deep backlog (W5): a reviewer's share of the open gates by group and by
escalation group, so the queue, its capped count and its pipeline list read only that share."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reviews", "0007_gate_corrections"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="gate",
            index=models.Index(
                condition=models.Q(("status", "open")),
                fields=["group", "pipeline"],
                name="gate_open_group_pipeline",
            ),
        ),
        migrations.AddIndex(
            model_name="gate",
            index=models.Index(
                condition=models.Q(("escalated_at__isnull", False), ("status", "open")),
                fields=["escalate_to", "pipeline"],
                name="gate_open_escalated",
            ),
        ),
    ]
