from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operator console: where operators watch and act (models, and more to come: docs/console.md)."""

    name = "console"
