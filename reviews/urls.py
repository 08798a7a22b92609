"""Reviewer pages, mounted at /reviews/."""

from __future__ import annotations

from django.urls import path

from reviews import insights_views, views

app_name = "reviews"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("mine/", views.my_decisions, name="decisions"),
    path("bulk/", views.bulk_decide, name="bulk"),
    path("events/", views.gate_events, name="events"),
    path("insights/", insights_views.insights_page, name="insights"),
    path("insights/export.jsonl", insights_views.insights_export, name="insights-export"),
    path("preferences/", views.preferences, name="preferences"),
    path("<int:pk>/", views.gate_detail, name="gate"),
    path("<int:pk>/status/", views.gate_status, name="gate-status"),
    path("<int:pk>/claim/", views.gate_claim, name="claim"),
    path("<int:pk>/release/", views.gate_release, name="release"),
    path("<int:pk>/decide/", views.gate_decide, name="decide"),
    path("<int:pk>/reassign/", views.gate_reassign, name="reassign"),
]
