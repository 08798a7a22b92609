"""The Celery application, configured the documented Django way.

Messages are doorbells ("look at run X"); every fact lives in the database, so the
broker settings below favour redelivery over loss: late acks, requeue when a worker dies,
prefetch one.
"""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
