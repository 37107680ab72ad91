"""The console's load and unload actions: staff only, CSRF on every POST, answers in JSON with the reason.

No worker runs here: an accepted load stays queued (202), which is what the page shows until the board moves.
"""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from serves.models import ModelState, Serve
from tests.evals.console import operator_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def serve() -> Serve:
    return Serve.objects.create(name="board-one", tier="fast", runtime="process", port=1, command=["true"],
                                served_model="m", load_constraints={"max_model_len": {"min": 256, "max": 8192}})


def post(client: Client, path: str, body: dict[str, object], token: bool = True) -> tuple[int, dict[str, object]]:
    headers = {}
    if token:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get("/").content.decode())
        assert found, "the models page draws a CSRF token"
        headers["HTTP_X_CSRFTOKEN"] = found.group(1)
    answer = client.post(path, json.dumps(body), content_type="application/json", **headers)
    return answer.status_code, (answer.json() if answer["content-type"] == "application/json" else {})


def test_an_out_of_range_override_is_a_422_naming_it_and_nothing_changes(serve: Serve) -> None:
    status, answer = post(operator_client(), f"/console/models/{serve.name}/load",
                          {"overrides": {"max_model_len": 99999}})
    assert status == 422 and answer["error"] == {"message": "from 256 to 8192", "field": "max_model_len"}
    assert Serve.objects.get(pk=serve.pk).model_state == ModelState.UNLOADED


def test_unloading_an_unloaded_serve_is_a_200_and_a_missing_one_a_404(serve: Serve) -> None:
    client = operator_client()
    status, answer = post(client, f"/console/models/{serve.name}/unload", {})
    assert status == 200 and answer["accepted"] is False
    status, answer = post(client, "/console/models/nothing-here/unload", {})
    assert status == 404 and "No serve is named 'nothing-here'" in str(answer["error"])


def test_a_post_without_a_csrf_token_or_a_login_is_refused(serve: Serve) -> None:
    status, _ = post(operator_client(), f"/console/models/{serve.name}/load", {}, token=False)
    assert status == 403
    anonymous = Client(enforce_csrf_checks=True).post(f"/console/models/{serve.name}/load", "{}",
                                                      content_type="application/json")
    assert anonymous.status_code == 403  # the CSRF check comes first
    assert Serve.objects.get(pk=serve.pk).model_state == ModelState.UNLOADED
