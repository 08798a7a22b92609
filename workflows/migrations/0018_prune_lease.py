"""A lease row per single-instance duty (found by review): the hourly prune drained its whole
backlog in one task, and the next hour's ran beside it. ``workflows.core.sweeper.prune`` takes
the ``prune`` lease by compare-and-swap (PgBouncer in transaction mode rules out advisory
locks); a second prune returns at once. A new, empty table: nothing is rewritten."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0017_run_created_by_user_id"),
    ]

    operations = [
        migrations.CreateModel(
            name="Lease",
            fields=[
                ("name", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("owner", models.CharField(blank=True, default="", max_length=200)),
                ("expires_at", models.DateTimeField()),
            ],
        ),
    ]
