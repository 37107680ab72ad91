"""schemathesis against /api/schema/: every operation the control-plane API documents, fuzzed with a
staff session through the real Django application (WSGI, the same middleware the console runs behind).

The goal is zero 5xx: ``not_a_server_error`` fails on any, and the response must match the schema.
Random examples (20 an operation) rarely reach the edges, so a sweep also sends hostile values to every
documented query parameter; each 5xx that found is a named regression test below.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.wsgi import get_wsgi_application
from django.test import Client
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from inference.keys import create_key
from routing.models import DecisionRecord

pytestmark = pytest.mark.django_db(transaction=True)  # the WSGI handler closes connections per request

EXAMPLES_PER_OPERATION = 20


@pytest.fixture
def staff_client() -> Client:
    """A logged-in staff session with its CSRF cookie (DRF's SessionAuthentication checks it on unsafe methods)."""
    operator = get_user_model().objects.create_user("fuzz-operator", password="pw", is_staff=True)
    client = Client()
    client.get("/admin/login/")  # the login page sets the csrftoken cookie (for an anonymous visitor)
    client.force_login(operator)
    return client


@pytest.fixture
def rows() -> None:
    """A few real rows, so that retrieve and the filters sometimes find something."""
    for index in range(3):
        create_key(f"fuzz-{index}")
        DecisionRecord.objects.create(request_id=f"req_{index}", endpoint="chat", served_by="fast",
                                      work_class="chat", outcome="ok", status=200)


# Loaded at collection, from the app itself (schemathesis's fixture-based lazy loader does not run under
# pytest 9). Serving the schema reads no database, so this needs no test database yet.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


def session_of(client: Client) -> tuple[dict[str, str], dict[str, str]]:
    cookies = {name: morsel.value for name, morsel in client.cookies.items()}
    return cookies, {"X-CSRFToken": cookies["csrftoken"]}


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_documented_operation_answers_without_a_server_error(case: Any, rows: None,
                                                                  staff_client: Client) -> None:
    cookies, headers = session_of(staff_client)
    case.call_and_validate(cookies=cookies, headers=headers,
                           checks=[not_a_server_error, response_schema_conformance])


HOSTILE_QUERY_VALUES = [str(2**64 + 1), str(-(2**64)), "-1", "0", "1e400", "NaN", "x\x00", "\ud800", "9" * 5000]


def test_every_documented_query_parameter_survives_hostile_values(rows: None, staff_client: Client) -> None:
    # Random generation rarely reaches the edges (a limit past 64 bits, a NUL): sweep them for every documented
    # query parameter of every operation, one at a time.
    sent = 0
    for path, methods in schema.raw_schema["paths"].items():
        for method, operation in methods.items():
            concrete = path.replace("{id}", "1")
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query":
                    continue
                for value in HOSTILE_QUERY_VALUES:
                    answer = staff_client.generic(method.upper(), concrete, QUERY_STRING=urlencode(
                        {parameter["name"]: value.encode("utf-8", "surrogatepass")}))
                    sent += 1
                    assert answer.status_code < 500, (method, path, parameter["name"], value[:20],
                                                      answer.content[:300])
    assert sent >= 6 * len(HOSTILE_QUERY_VALUES)  # limit, offset and the four decision filters at least


# --- what the fuzz found ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/keys/", "/api/decisions/"])
def test_a_limit_past_a_64_bit_integer_is_clamped_not_a_500(rows: None, staff_client: Client, path: str) -> None:
    # DRF's LimitOffsetPagination had no ceiling: the LIMIT reached SQLite ("datatype mismatch") and
    # PostgreSQL ("bigint out of range") as given, once the table had a row.
    answer = staff_client.get(path, {"limit": str(2**64 + 1)})
    assert answer.status_code == 200, answer.content[:300]
    assert len(answer.json()["results"]) == 3


@pytest.mark.parametrize("name", ["served_by", "work_class", "outcome", "request_id"])
def test_a_nul_in_a_decision_filter_is_a_400_naming_the_filter(rows: None, staff_client: Client, name: str) -> None:
    # PostgreSQL text cannot hold a NUL: the filter's query failed there as a 500 (SQLite only found nothing).
    answer = staff_client.get("/api/decisions/", {name: "fast\x00"})
    assert answer.status_code == 400, answer.content[:300]
    assert name in answer.json()


def test_the_decision_filters_are_in_the_schema_so_the_fuzz_reaches_them() -> None:
    listed = schema.raw_schema["paths"]["/api/decisions/"]["get"]["parameters"]
    assert {"served_by", "work_class", "outcome", "request_id"} <= {parameter["name"] for parameter in listed}
