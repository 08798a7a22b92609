"""Create the demo users that ``make run`` prints: an admin and a reviewer, and start a few demo
runs of the built-in pipelines so the review queue is not empty.

Idempotent: running it again leaves one of each, puts the reviewer back in the ``reviewers``
group (which sees every run of the default tenant, ``SLUICE_RUN_VIEWER_GROUPS``) with the
``workflows.start_run`` permission (so the demo's "Start run" buttons work for them), takes any
tenant membership away from both (the demo runs are of the default tenant), and resets both
passwords to the printed ones, so the credentials shown always work. The
demo runs carry idempotency keys, so they are started once (``--no-runs`` skips them).
Only for the embedded demo; never run it against a production database.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand
from django.db import transaction

REVIEWERS_GROUP = "reviewers"

# (username, password, is_staff, is_superuser, groups, may start runs from the web)
DEMO_USERS: tuple[tuple[str, str, bool, bool, tuple[str, ...], bool], ...] = (
    ("admin", "admin", True, True, (), True),
    ("reviewer", "reviewer", False, False, (REVIEWERS_GROUP,), True),
)


# (idempotency key, pipeline, input): the analyses stop at a review gate once a worker ran
# them; the document batch runs through (it has no gate).
DEMO_RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("demo:thread_analysis:1", "thread_analysis", {}),  # the pipeline's sample input
    (
        "demo:thread_analysis:2",
        "thread_analysis",
        {
            "title": "Weekend plans",
            "thread": "Jo: Can we talk about the weekend?\nKim: Sure, what's up?\n"
            "Jo: I feel like we never see my family.\n"
            "Kim: That's not true, we saw them last month. You're overreacting.\n"
            "Jo: I just want us to plan it together.\nKim: Whatever. Plan it then.",
        },
    ),
    (
        "demo:support_ticket:1",
        "support_ticket",
        {
            "customer_email": "lee@example.com",
            "subject": "Parrot in the office",
            "message": "Our office parrot keeps chewing the plants. What should we feed him?",
            "channel": "chat",
        },
    ),
    ("demo:document_batch:1", "document_batch", {}),
)


class Command(BaseCommand):
    help = (
        "Create (or repair) the demo admin and demo reviewer, print their credentials, and "
        "start the demo pipeline runs."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-runs", action="store_true", help="Do not start demo runs.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.create_users()
        if not options.get("no_runs"):
            self.start_runs()

    def start_runs(self) -> None:
        """Start each demo run once; the workers of ``make run`` take them from there."""
        from pipelines.registry import get_pipeline
        from workflows import start

        for key, name, data in DEMO_RUNS:
            definition = get_pipeline(name)
            if definition is None:
                continue
            run = start(
                name,
                data or definition.extra["sample_input"],
                idempotency_key=key,
                created_by="admin",
            )
            self.stdout.write(f"demo run {name}: /runs/{run.pk}/ ({run.status})")

    def create_users(self) -> None:
        from workflows.models import TenantMembership

        User = get_user_model()
        with transaction.atomic():
            group, _ = Group.objects.get_or_create(name=REVIEWERS_GROUP)
            start_run = Permission.objects.get(
                content_type__app_label="workflows", codename="start_run"
            )
            for username, password, is_staff, is_superuser, groups, starts in DEMO_USERS:
                user, created = User.objects.get_or_create(
                    username=username,
                    defaults={"is_staff": is_staff, "is_superuser": is_superuser},
                )
                changed = created
                if user.is_staff != is_staff or user.is_superuser != is_superuser:
                    user.is_staff, user.is_superuser = is_staff, is_superuser
                    changed = True
                if not user.is_active:
                    user.is_active = True
                    changed = True
                # A demo whose printed password no longer works is worse than a reset one.
                if created or not user.check_password(password):
                    user.set_password(password)
                    changed = True
                if changed:
                    user.save()
                if REVIEWERS_GROUP in groups:
                    user.groups.add(group)
                if starts:
                    user.user_permissions.add(start_run)
                # The demo runs are of the default tenant: a membership would hide them.
                TenantMembership.objects.filter(user=user).delete()
                verb = "created" if created else "ready"
                self.stdout.write(f"demo user {verb}: {username} / {password}")

        self.stdout.write(
            self.style.SUCCESS(
                "Log in at /admin/ as admin/admin (staff, superuser) "
                "or at /accounts/login/ as reviewer/reviewer (group 'reviewers', may start runs)."
            )
        )
