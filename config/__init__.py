"""Project configuration: settings, URLs, the Celery app and the assembled JSON API."""

from config.celery import app as celery_app

__all__ = ["celery_app"]
