"""App config: plugs ``ctx.review`` into the engine and cancels gates when their run ends (or a
cancel stops it to undo its steps)."""

from __future__ import annotations

from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    name = "reviews"
    verbose_name = "Reviews"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import reviews.notifications  # noqa: F401  (registers the "notify" outbox handler)
        from reviews.decision import review
        from reviews.retention import on_runs_pruning
        from reviews.services import on_run_finished, on_run_stopped, run_may_hold_gates
        from workflows.core.context import Context
        from workflows.core.signals import run_finished, run_stopped, runs_pruning

        Context.extensions["review"] = review
        run_finished.connect(
            on_run_finished, dispatch_uid="reviews.cancel_open_gates", wants=run_may_hold_gates
        )
        run_stopped.connect(on_run_stopped, dispatch_uid="reviews.cancel_gates_of_stopped_run")
        runs_pruning.connect(on_runs_pruning, dispatch_uid="reviews.keep_gate_trails")
