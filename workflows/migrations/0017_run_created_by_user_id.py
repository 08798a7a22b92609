"""Who started a run, by user id (found by review): ``created_by`` is a username copied at
start, so renaming the starter let them approve their own run past separation of duties, and a
new account given a departed user's name saw that user's runs. A nullable column without a
default: adding it does not rewrite the runs table. Older runs keep matching by name."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0016_fold_history_hours"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="created_by_user_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
