"""Operator pages, mounted at the site root: /runs/, /runs/<id>/, /ops/, and the probes
/healthz and /readyz."""

from __future__ import annotations

from django.urls import path

from workflows import health, views

app_name = "workflows"

urlpatterns = [
    path("runs/", views.runs_list, name="runs"),
    path("runs/<uuid:run_id>/", views.run_page, name="run"),
    path("runs/<uuid:run_id>/actions/<slug:action>/", views.run_action, name="run-action"),
    path("runs/<uuid:run_id>/values/<int:blob_id>/", views.run_value, name="run-value"),
    path(
        "runs/<uuid:run_id>/steps/<int:step_id>/<slug:part>/",
        views.step_value,
        name="step-value",
    ),
    path("ops/", views.ops_overview, name="ops"),
    # Probes for load balancers and orchestrators: unauthenticated, they reveal no secrets.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # A probe configured with the trailing slash answers too (a load balancer does not follow
    # a redirect: the process would be marked down).
    path("healthz/", health.healthz),
    path("readyz/", health.readyz),
]
