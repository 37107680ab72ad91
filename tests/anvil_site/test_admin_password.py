"""ANVIL_ADMIN_PASSWORD must pass Django's password validators before the launcher creates the admin.

The defect: any value was accepted ("1", "password", the username itself) for a superuser whose
login page is reachable wherever Anvil listens.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from anvil_site.admin_account import AdminPasswordRefused, ensure_admin_user
from anvil_site.launcher import LaunchError
from tests.support.processes import ROOT, child_env, manage

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("password", "complaint"), [
    ("password", "This password is too common."),
    ("1234", "This password is too short."),
    ("73921584", "This password is entirely numeric."),
    ("operator-on-call", "The password is too similar to the username."),
])
def test_weak_admin_password_is_refused_naming_the_variable_and_the_complaints(
        settings: Any, password: str, complaint: str) -> None:
    settings.ANVIL_ADMIN_USER = "operator-on-call"
    settings.ANVIL_ADMIN_PASSWORD = password
    with pytest.raises(AdminPasswordRefused) as refused:
        ensure_admin_user()
    message = str(refused.value)
    assert message.startswith("ANVIL_ADMIN_PASSWORD is refused by the password validators:")
    assert complaint in message
    assert isinstance(refused.value, LaunchError)  # what runstack catches and prints before it stops
    assert not get_user_model().objects.exists()


def test_the_launcher_tests_password_passes_and_creates_the_admin(settings: Any) -> None:
    settings.ANVIL_ADMIN_USER = "admin"
    settings.ANVIL_ADMIN_PASSWORD = "launcher-test-pass"  # tests/anvil_site/test_launcher.py's
    account = ensure_admin_user()
    assert account.created and account.username == "admin" and account.generated_password is None
    assert get_user_model().objects.get(username="admin").check_password("launcher-test-pass")


def test_a_generated_password_is_not_validated_away(settings: Any) -> None:
    settings.ANVIL_ADMIN_PASSWORD = ""
    account = ensure_admin_user()
    assert account.created and account.generated_password


def test_an_existing_superuser_is_left_alone_whatever_the_variable_says(settings: Any) -> None:
    get_user_model().objects.create_superuser("root", "", "an-earlier-good-password")
    settings.ANVIL_ADMIN_PASSWORD = "1"
    account = ensure_admin_user()
    assert not account.created and account.username == "root"


@pytest.mark.slow
def test_the_launcher_stops_with_the_validators_message(tmp_path: Path) -> None:
    env = child_env(ANVIL_VAR_DIR=str(tmp_path / "var"), ANVIL_ADMIN_PASSWORD="password", NO_COLOR="1",
                    DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    result = subprocess.run(manage("runstack", "--no-hrm", "--no-beat"), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "cannot start: ANVIL_ADMIN_PASSWORD is refused by the password validators" in output
    assert "This password is too common." in output and "Anvil is up" not in output
