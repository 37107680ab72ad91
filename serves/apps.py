from __future__ import annotations

from django.apps import AppConfig


class ServesConfig(AppConfig):
    name = "serves"
    verbose_name = "Serves"
