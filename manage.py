#!/usr/bin/env python
"""Django's command-line entry point for Anvil."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "anvil_site.settings")
    from anvil_site.command_guard import run

    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
