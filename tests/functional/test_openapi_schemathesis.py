"""The standing Schemathesis suite: the served OpenAPI document against the real server.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid, each with a
freshly minted valid ``X-OPENTOK-AUTH`` and the server's API key in the path (half of them for
a real session, so more than the 403/404 paths are reached). Every response must be no 5xx
and conform to the document: a documented status, content type, headers and schema. Where
the API is deliberately lenient for the SDKs' sake, the document says so; no check is off.
The examples are bounded so the suite stays well under two minutes.
"""

from __future__ import annotations

import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from tests.conftest import API_KEY, API_SECRET

pytestmark = pytest.mark.timeout(300)

#: Examples per operation and generation mode (positive, negative).
EXAMPLES = 25


def mint_auth() -> str:
    now = int(time.time())
    claims = {"iss": API_KEY, "ist": "project", "iat": now, "exp": now + 180, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, API_SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir: pathlib.Path = tmp_path_factory.mktemp("schemathesis")
    config = ServerConfig(
        port=0,
        data_dir=data_dir,
        api_key=API_KEY,
        api_secret=API_SECRET,
        media=False,
        demo_rate_burst=1000,  # the demo endpoint's 429 is tested elsewhere; here, its answers
    )
    with ServerThread(config) as server:
        created = httpx.post(server.url + "/session/create", headers={"X-OPENTOK-AUTH": mint_auth()})
        assert created.status_code == 200
        yield server.url, created.json()[0]["session_id"]


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, "the document lost its operations"
    return operations


def exercise(operation: Any, mode: GenerationMode, url: str, session_id: str) -> set[int]:
    """Run ``EXAMPLES`` generated requests of one operation; the statuses answered."""
    statuses: set[int] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), real_session=st.booleans())
    def check(case: schemathesis.Case, real_session: bool) -> None:
        if case.path_parameters is not None:
            if "apiKey" in case.path_parameters:
                case.path_parameters["apiKey"] = API_KEY
            if real_session and "sessionId" in case.path_parameters:
                case.path_parameters["sessionId"] = session_id
        case.headers = {**(case.headers or {}), "X-OPENTOK-AUTH": mint_auth()}
        response = case.call_and_validate(base_url=url)  # every check Schemathesis has
        assert response.status_code < 500, case.as_curl_command()
        statuses.add(response.status_code)

    check()
    return statuses


def test_every_operation_conforms_to_the_served_openapi(served: tuple[str, str]) -> None:
    url, session_id = served
    operations = _operations(url)
    seen: dict[str, set[int]] = {}
    unnegatable: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                seen.setdefault(operation.label, set()).update(exercise(operation, mode, url, session_id))
            except hypothesis.errors.Unsatisfiable:
                # Nothing of this operation can be made invalid: no body, and every parameter
                # is any string (GET /health, the stream lookups...).
                assert mode is GenerationMode.NEGATIVE, operation.label
                assert not list(operation.body), f"{operation.label}: its body was never made invalid"
                unnegatable.append(operation.label)
    # The suite reaches past authentication: successes and refusals of bad input alike.
    assert any(200 <= s < 300 for statuses in seen.values() for s in statuses), seen
    assert any(s == 400 for statuses in seen.values() for s in statuses), seen
    assert len(unnegatable) < len(operations) / 2, unnegatable


def test_an_undocumented_method_gets_405_with_every_documented_method_in_allow(
    served: tuple[str, str],
) -> None:
    url, session_id = served
    document = httpx.get(url + "/openapi.json").json()
    for template, item in document["paths"].items():
        documented = {method.upper() for method in item}
        path = template.replace("{apiKey}", API_KEY).replace("{sessionId}", session_id)
        path = path.replace("{streamId}", "s1").replace("{connectionId}", "c1")
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - documented:
            r = httpx.request(method, url + path, headers={"X-OPENTOK-AUTH": mint_auth()})
            assert r.status_code == 405, (method, template, r.status_code)
            assert r.json()["code"] == "method_not_allowed" and r.json()["message"]
            allowed = {m.strip() for m in r.headers["allow"].split(",")}
            assert allowed - {"HEAD"} == documented, (method, template, allowed)


def test_the_document_marks_required_bodies_and_every_limit(served: tuple[str, str]) -> None:
    url, _ = served
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    signal = paths["/v2/project/{apiKey}/session/{sessionId}/signal"]["post"]
    assert signal["requestBody"]["required"] is True
    for item in paths.values():
        for operation in item.values():
            assert "422" not in operation["responses"], operation["summary"]
            if "requestBody" in operation:
                assert "413" in operation["responses"], operation["summary"]
    demo = paths["/demo/join"]["post"]["responses"]
    assert {"200", "400", "413", "429"} <= set(demo)
    assert "lenient" in paths["/session/create"]["post"]["requestBody"]["description"]
