from __future__ import annotations

from django.apps import AppConfig


class AnvilSiteConfig(AppConfig):
    name = "anvil_site"
    verbose_name = "Anvil"

    def ready(self) -> None:
        from anvil_site import checks  # noqa: F401  (registers the system checks)
