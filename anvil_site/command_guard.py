"""``manage.py`` run against the wrong database says so in one line, instead of a traceback.

A second terminal with another ``ANVIL_VAR_DIR`` (or none, where the stack had one) points a command
at a different SQLite file: connecting would quietly create it, and the command would then die deep
in the ORM with "no such table". So a command that reads Anvil's tables first checks that the
database exists, and a database error that means "not migrated" is reported as what it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Commands that make the database, or never open it.
NO_DATABASE_NEEDED = frozenset({
    "migrate", "makemigrations", "sqlmigrate", "showmigrations", "squashmigrations", "runstack", "test",
    "check", "help", "version", "runinference", "trainhrm", "buildbaseline", "collectstatic",
    "startapp", "startproject", "diffsettings", "compilemessages", "makemessages",
})
_UNMIGRATED = ("no such table", "does not exist", "undefinedtable")


def where() -> str:
    from django.conf import settings

    from anvil_site.environment import describe_database

    return (f"{describe_database(settings.DATABASES['default'])} (ANVIL_VAR_DIR={settings.VAR_DIR}, "
            f"DATABASE_URL {'set' if settings.DATABASE_URL_IS_SET else 'unset'})")


def missing_database(command: str) -> str | None:
    """Why ``command`` should not run here, or None. Only the SQLite file can be checked unopened."""
    from django.conf import settings

    if command in NO_DATABASE_NEEDED:
        return None
    database = settings.DATABASES["default"]
    if database.get("ENGINE", "").endswith("sqlite3") and not Path(str(database["NAME"])).exists():
        return (f"anvil: no database at {where()}; this is not the stack's. Run the command with the "
                "ANVIL_VAR_DIR (or DATABASE_URL) the stack uses, or create this one with `manage.py migrate`.")
    return None


def unmigrated(error: BaseException) -> str | None:
    from django.db.utils import OperationalError, ProgrammingError

    if isinstance(error, OperationalError | ProgrammingError) and any(
            marker in str(error).lower() for marker in _UNMIGRATED):
        return (f"anvil: the database at {where()} is not migrated ({str(error).splitlines()[0]}); run "
                "`manage.py migrate`, or point ANVIL_VAR_DIR / DATABASE_URL at the stack's database.")
    return None


def run(argv: list[str]) -> int:
    import django
    from django.core.management import execute_from_command_line

    django.setup()
    command = argv[1] if len(argv) > 1 else "help"
    problem = missing_database(command)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        execute_from_command_line(argv)
    except Exception as error:
        message = unmigrated(error)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    return 0
