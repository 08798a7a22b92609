"""A partial index on the held branches of fan-outs (found by review): letting the next held
branch go (``ORDER BY position, branch LIMIT 1`` over a run's held, pending, live branches)
walked ``step_unique_live_position`` past every branch already released, so a map over n
items cost O(n^2), each lookup under the group row's lock (41 ms per branch at 40,000
released). Only the branches still held are in it. A plain ``AddIndex``, as the earlier index
migrations (0012-0014): the build reads ``workflows_step`` once and writes only the held rows."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0018_prune_lease"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="step",
            index=models.Index(
                condition=models.Q(("held", True), ("status", "pending"), ("superseded", False)),
                fields=["run", "position", "branch"],
                name="step_held_pending",
            ),
        ),
    ]
