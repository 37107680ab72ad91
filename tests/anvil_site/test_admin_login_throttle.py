"""Sign-in is throttled per username and per client address, through the real admin login form.

The defect: twelve wrong passwords in a row were twelve accepted attempts. Now five failures
within the window lock the username and the address until the window passes, refuse even the
right password meanwhile, and a success forgets the username's failures.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.test import AsyncClient, Client, RequestFactory

from anvil_site.models import LoginFailure

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "correct-horse-battery"
ATTACKER = "203.0.113.7"
OPERATOR = "198.51.100.20"


@pytest.fixture
def admin_user(settings: object) -> object:
    # A fast hasher: these tests sign in dozens of times, and the throttle does not depend on it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]
    return get_user_model().objects.create_superuser("admin", "", PASSWORD)


def sign_in(client: Client, username: str, password: str, address: str = ATTACKER) -> tuple[int, str]:
    answer = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"},
                         REMOTE_ADDR=address)
    return answer.status_code, answer.content.decode()


def fail(client: Client, times: int, username: str = "admin", address: str = ATTACKER) -> None:
    for _ in range(times):
        status, page = sign_in(client, username, "wrong-password", address)
        assert status == 200 and ("Please enter the correct username and password" in page
                                  or "Too many failed sign-in attempts" in page)  # the one that locks


def test_five_wrong_passwords_lock_the_username_even_against_the_right_one(admin_user: object) -> None:
    client = Client()
    fail(client, settings.ANVIL_LOGIN_FAILURE_LIMIT - 1)
    status, page = sign_in(client, "admin", "wrong-password")
    assert status == 200 and "Too many failed sign-in attempts" in page  # the failure that locks says so
    for _ in range(7):  # the rest of the twelve: each refused before its password is checked
        status, page = sign_in(client, "admin", PASSWORD)
        assert status == 200 and "Too many failed sign-in attempts" in page and "15 more minutes" in page
    assert "_auth_user_id" not in client.session
    assert LoginFailure.objects.count() == settings.ANVIL_LOGIN_FAILURE_LIMIT  # refused tries are not counted


def test_a_locked_username_is_refused_from_another_address_too(admin_user: object) -> None:
    fail(Client(), settings.ANVIL_LOGIN_FAILURE_LIMIT)
    status, page = sign_in(Client(), "admin", PASSWORD, address=OPERATOR)
    assert status == 200 and "Too many failed sign-in attempts" in page


def test_an_address_with_five_failures_is_refused_for_every_username(admin_user: object) -> None:
    client = Client()
    for name in ("root", "ops", "operator", "anvil", "staff"):  # one guess each: no username reaches the limit
        fail(client, 1, username=name)
    status, page = sign_in(client, "admin", PASSWORD)
    assert status == 200 and "Too many failed sign-in attempts" in page
    status, _ = sign_in(Client(), "admin", PASSWORD, address=OPERATOR)  # the operator elsewhere is not locked
    assert status == 302


def test_the_lockout_ends_when_the_window_passes(admin_user: object) -> None:
    client = Client()
    fail(client, settings.ANVIL_LOGIN_FAILURE_LIMIT)
    assert "Too many failed sign-in attempts" in sign_in(client, "admin", PASSWORD)[1]
    # The window passes: the failures are now older than it (the rows are the throttle's only clock).
    window = timedelta(seconds=settings.ANVIL_LOGIN_LOCKOUT_SECONDS)
    for failure in LoginFailure.objects.all():
        failure.at -= window + timedelta(seconds=1)
        failure.save(update_fields=["at"])
    status, _ = sign_in(client, "admin", PASSWORD)
    assert status == 302 and client.session["_auth_user_id"]


def test_a_success_resets_the_count(admin_user: object) -> None:
    client = Client()
    fail(client, settings.ANVIL_LOGIN_FAILURE_LIMIT - 1)
    assert sign_in(client, "admin", PASSWORD)[0] == 302
    client.logout()
    fail(client, settings.ANVIL_LOGIN_FAILURE_LIMIT - 1)  # a fresh count: four more are not a lockout
    assert sign_in(client, "admin", PASSWORD)[0] == 302


def test_the_console_signs_in_through_the_same_throttled_form(admin_user: object) -> None:
    client = Client()
    assert client.get("/").url.startswith(LOGIN)
    fail(client, settings.ANVIL_LOGIN_FAILURE_LIMIT)
    answer = client.post(f"{LOGIN}?next=/", {"username": "admin", "password": PASSWORD, "next": "/"},
                         REMOTE_ADDR=ATTACKER)
    assert "Too many failed sign-in attempts" in answer.content.decode()


def test_the_lockout_holds_under_asgi(admin_user: object) -> None:
    """Daphne serves the login through Django's ASGI handler: the same rule, the same rows."""
    client = AsyncClient()

    def post(password: str) -> str:
        answer = async_to_sync(client.post)(LOGIN, {"username": "admin", "password": password, "next": "/admin/"})
        return answer.content.decode()

    for _ in range(settings.ANVIL_LOGIN_FAILURE_LIMIT):
        post("wrong-password")
    assert "Too many failed sign-in attempts" in post(PASSWORD)
    # The address counted is the connection's (the ASGI scope's client), not anything the form sent.
    assert list(LoginFailure.objects.values_list("client", flat=True).distinct()) == ["127.0.0.1"]
    assert LoginFailure.objects.count() == settings.ANVIL_LOGIN_FAILURE_LIMIT


def test_every_password_sign_in_is_refused_while_locked_not_only_the_admin_form(admin_user: object) -> None:
    fail(Client(), settings.ANVIL_LOGIN_FAILURE_LIMIT)
    request = RequestFactory().post(LOGIN, REMOTE_ADDR=OPERATOR)
    assert authenticate(request, username="admin", password=PASSWORD) is None  # the backend itself refuses


def test_an_operator_sees_the_failures_and_lifts_a_lockout_by_deleting_them(admin_user: object) -> None:
    fail(Client(), settings.ANVIL_LOGIN_FAILURE_LIMIT, username="ops")
    operator = Client()
    assert sign_in(operator, "admin", PASSWORD, address=OPERATOR)[0] == 302
    listed = operator.get("/admin/anvil_site/loginfailure/").content.decode()
    assert listed.count(ATTACKER) >= settings.ANVIL_LOGIN_FAILURE_LIMIT
    ids = [str(pk) for pk in LoginFailure.objects.values_list("pk", flat=True)]
    operator.post("/admin/anvil_site/loginfailure/", {"action": "delete_selected", "_selected_action": ids,
                                                      "post": "yes"})
    assert not LoginFailure.objects.exists()
