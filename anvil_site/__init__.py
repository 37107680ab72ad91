"""The Anvil Django project: settings, URL and protocol routing, Celery app, checks, launcher."""

from anvil_site.celery import app as celery_app

__all__ = ["celery_app"]
