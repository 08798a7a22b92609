"""A four-eyes approval counts once per person, by user id (found by review): the constraint
was on the approver's name, so a reviewer renamed after approving could approve the same gate
again and close a two-person gate alone, and an account later given a former approver's name
could not approve at all. Now a signed-in user's approvals are unique by (gate, user) and an API
key's by (gate, ``api:<prefix>``).

A gate already approved twice by one renamed user (the bug itself) would stop the new
constraint from being built: the later of such approvals keeps its name, for the record, and
loses its user id first. Both partial unique indexes are built over the approvals table, which
holds a row per approval of a four-eyes gate only."""

from typing import Any

from django.conf import settings
from django.db import migrations, models
from django.db.models import Count, Min


def unlink_repeated_approvals(apps: Any, schema_editor: Any) -> None:
    GateApproval = apps.get_model("reviews", "GateApproval")
    repeated = (
        GateApproval.objects.filter(user__isnull=False)
        .values("gate_id", "user_id")
        .annotate(n=Count("id"), first=Min("id"))
        .filter(n__gt=1)
    )
    for row in repeated:
        GateApproval.objects.filter(gate_id=row["gate_id"], user_id=row["user_id"]).exclude(
            pk=row["first"]
        ).update(user=None)


def unique_names_again(apps: Any, schema_editor: Any) -> None:
    """Backwards, before the name constraint is built again: two approvals of a gate under one
    name (a deleted user's and a new account's of the same name, which this migration allows)
    would stop it. The later ones keep their user and get their row id in the name."""
    GateApproval = apps.get_model("reviews", "GateApproval")
    repeated = (
        GateApproval.objects.values("gate_id", "approver")
        .annotate(n=Count("id"), first=Min("id"))
        .filter(n__gt=1)
    )
    for row in repeated:
        later = GateApproval.objects.filter(
            gate_id=row["gate_id"], approver=row["approver"]
        ).exclude(pk=row["first"])
        for approval in later:
            suffix = f" (#{approval.pk})"
            approval.approver = approval.approver[: 150 - len(suffix)] + suffix
            approval.save(update_fields=["approver"])


class Migration(migrations.Migration):
    dependencies = [
        ("reviews", "0008_gate_queue_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(unlink_repeated_approvals, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="gateapproval",
            constraint=models.UniqueConstraint(
                condition=models.Q(("user__isnull", False)),
                fields=("gate", "user"),
                name="gate_approval_once_per_user",
            ),
        ),
        migrations.AddConstraint(
            model_name="gateapproval",
            constraint=models.UniqueConstraint(
                condition=models.Q(("approver__startswith", "api:"), ("user__isnull", True)),
                fields=("gate", "approver"),
                name="gate_approval_once_per_key",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="gateapproval",
            name="gate_approval_once",
        ),
        # Undone first when migrating back: names unique per gate before the old constraint.
        migrations.RunPython(migrations.RunPython.noop, unique_names_again),
    ]
