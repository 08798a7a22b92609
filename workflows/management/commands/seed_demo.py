"""Create the demo users that ``make run`` prints: an admin and a reviewer.

Idempotent: running it again leaves one of each, puts the reviewer back in the ``reviewers``
group and resets both passwords to the printed ones, so the credentials shown always work.
Only for the embedded demo; never run it against a production database.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

REVIEWERS_GROUP = "reviewers"

# (username, password, is_staff, is_superuser, groups)
DEMO_USERS: tuple[tuple[str, str, bool, bool, tuple[str, ...]], ...] = (
    ("admin", "admin", True, True, ()),
    ("reviewer", "reviewer", False, False, (REVIEWERS_GROUP,)),
)


class Command(BaseCommand):
    help = "Create (or repair) the demo admin and demo reviewer, and print their credentials."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            group, _ = Group.objects.get_or_create(name=REVIEWERS_GROUP)
            for username, password, is_staff, is_superuser, groups in DEMO_USERS:
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
                verb = "created" if created else "ready"
                self.stdout.write(f"demo user {verb}: {username} / {password}")

        self.stdout.write(
            self.style.SUCCESS(
                "Log in at /admin/ as admin/admin (staff, superuser) "
                "or at /accounts/login/ as reviewer/reviewer (group 'reviewers')."
            )
        )
