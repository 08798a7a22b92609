"""URLs of the pipelines app, mounted at /pipelines/ by config.urls."""

from __future__ import annotations

from django.urls import path

from pipelines import views

app_name = "pipelines"

urlpatterns = [
    path("", views.pipeline_list, name="list"),
    path("runs/<uuid:run_id>/graph/", views.run_graph, name="run-graph"),
    path("<str:name>/start/", views.start_run, name="start"),
]
