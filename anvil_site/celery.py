"""The Celery application, configured from Django settings (namespace ``CELERY``).

Tasks live in each app's ``tasks.py``; they take ids, not model instances.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import beat_init, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "anvil_site.settings")

app = Celery("anvil")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _refuse_bad_configuration_in_worker(**kwargs: object) -> None:
    from anvil_site.checks import fail_fast

    fail_fast("The Celery worker")


@beat_init.connect
def _refuse_bad_configuration_in_beat(**kwargs: object) -> None:
    from anvil_site.checks import fail_fast

    fail_fast("Celery beat")
