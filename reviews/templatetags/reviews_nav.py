"""Navigation checks for base.html: which reviewer pages a user may open."""

from __future__ import annotations

from typing import Any

from django import template

from reviews import services

register = template.Library()


@register.filter
def sees_insights(user: Any) -> bool:
    """The insights page's own rule (reviews.insights_views): a reviewer or a gate operator."""
    return services.is_reviewer(user)
