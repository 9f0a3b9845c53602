"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis), with auth on.

A real server (real engine, real containers) answers every generated request, and
``call_and_validate`` runs every check schemathesis enables by default on every
response: no 5xx, status codes, content types, headers and bodies as documented,
schema-valid requests accepted, invalid ones rejected, and — with the bearer scheme
filled in below — a missing or wrong key refused with a 401 on every /v1 route.

Where the served schema says less than the server does, the fuzzer works from a copy
with the gap filled in: :data:`SCHEMA_GAPS` lists each one, what the server really
does that its schema does not say. ``test_each_schema_gap_is_still_open`` fails as
soon as the server documents one of them, so the list stays exact. Two more gaps
cannot be said in JSON Schema and are allowed in the checks' configuration instead,
each commented where it is (413 for sizes in bytes; 400 for unsafe file paths).

Cost. A session is a container (0.6 s to start; 5 to 30 s with a CPU quota under
0.25, which this test raises to 0.25), so the server allows few sessions (3 per key,
4 in all: a 429 beyond), the two operations that start containers get 10 examples,
and the sessions POST /v1/sessions created are deleted after each example. The other
operations get up to 100 (40 for cells and restarts), half of them on a real live
session: the fuzzer's own session ids are random and would only ever see a 404.
About a minute on this 2-core machine.

Generation is deterministic (Hypothesis ``derandomize``): the same code fuzzes the
same way in CI and here, and a failure reproduces. The schema is built at import from
``create_app`` with the server's settings (schemathesis' ``from_fixture`` loader does
not work with pytest 9.2: it sets ``Function._nodeid``), and
``test_the_fuzzed_schema_is_the_served_one`` checks that it is what the server serves.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st

from api.main import create_app
from api.settings import Settings
from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID, LABEL_SESSION
from tests.api.conftest import KEY_A, make_settings, run_server

pytestmark = pytest.mark.usefixtures("engine")

AUTH = {"Authorization": f"Bearer {KEY_A}"}
MIN_CPUS = 0.25
LIMITS: dict[str, Any] = {
    "max_sessions": 4, "max_sessions_per_key": 3,
    "max_memory_mb": 2048, "max_cpus": 2.0, "max_pids": 1024,
    "max_execution_timeout_s": 5.0, "default_execution_timeout_s": 5.0,
    "max_code_bytes": 10_000, "max_upload_bytes": 100_000, "max_request_bytes": 50_000,
}
SETTINGS = Settings(api_keys=KEY_A, **LIMITS)
SERVED = create_app(SETTINGS).openapi()  # what the server serves (checked below)

RESERVED_ENV = ["HOME", "PATH", "IPYTHONDIR", "MPLCONFIGDIR", "MPLBACKEND", "AGENTBOX_RUN_DIR",
                "AGENTBOX_AUTOSTART", "PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH",
                "PYTHONSTARTUP", "PYTHONHOME"]
ENV = {"type": "object", "title": "Env",
       "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "not": {"enum": RESERVED_ENV}},
       "additionalProperties": {"type": "string", "pattern": "^[^\\x00]*$"}}
CODE = {"type": "string", "title": "Code", "pattern": "^[^\\x00]*$"}


def limit(name: str) -> list[str]:
    return ["components", "schemas", "Limits", "properties", name, "anyOf", "0"]


def timeout_of(model: str) -> list[str]:
    return ["components", "schemas", model, "properties", "timeout_s", "anyOf", "0"]


# (what the server does that its schema does not say, where, key, what fills the gap)
SCHEMA_GAPS: list[tuple[str, list[str], str, Any]] = [
    *[(f"limits.{name} above the server's maximum ({getattr(SETTINGS, setting)}) is a 422 "
       "limit_exceeded; the schema has no maximum", limit(name), "maximum",
       getattr(SETTINGS, setting))
      for name, setting in [("memory_mb", "max_memory_mb"), ("cpus", "max_cpus"),
                            ("pids", "max_pids"),
                            ("execution_timeout_s", "max_execution_timeout_s"),
                            ("idle_timeout_s", "max_idle_timeout_s"),
                            ("max_lifetime_s", "max_lifetime_s")]],
    *[(f"{model}.timeout_s above max_execution_timeout_s is a 422 limit_exceeded; the "
       "schema has no maximum", timeout_of(model), "maximum",
       LIMITS["max_execution_timeout_s"]) for model in ["ExecuteRequest", "OneShotRequest"]],
    *[(f"{model}.code: a NUL byte is a 422 invalid_settings; the schema says any string",
       ["components", "schemas", model, "properties"], "code", CODE)
      for model in ["ExecuteRequest", "OneShotRequest"]],
    *[(f"{model}.env: a name that is not an identifier, or is set by the sandbox itself "
       "(HOME, PATH...), or a value with NUL is a 422 invalid_settings; the schema says any "
       "string", ["components", "schemas", model, "properties"], "env", ENV)
      for model in ["CreateSession", "OneShotRequest"]],
]


def at(document: Any, where: list[str]) -> Any:
    for part in where:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def documented() -> dict[str, Any]:
    """The served schema with every gap of SCHEMA_GAPS filled in."""
    openapi = copy.deepcopy(SERVED)
    for _, where, key, value in SCHEMA_GAPS:
        at(openapi, where)[key] = value
    return openapi


CONFIG = schemathesis.Config.from_dict({
    "generation": {"max-examples": 100, "database": "none", "deterministic": True},
    # The key for the security scheme the server declares: schemathesis sends it with
    # valid requests, and also leaves it out or garbles it (a 401 is then expected).
    "auth": {"openapi": {"bearer": {"bearer": KEY_A}}},
    "checks": {
        "positive_data_acceptance": {"expected-statuses": [
            "2xx", "3xx", 401, 403, 404, 409, 429, "5xx",  # schemathesis' defaults
            # GAP: sizes in bytes (code: max_code_bytes, uploads: max_upload_bytes, JSON
            # bodies: max_request_bytes) cannot be said in JSON Schema: over them is a 413.
            413]},
        "negative_data_rejection": {"expected-statuses": [
            400, 401, 403, 404, 405, 406, 409, 415, 422, 428, 429,  # the defaults
            413]},  # a body too large for the server is rejected too
    },
    "operations": [
        # Each starts a container (and /v1/execute removes it again).
        {"include-name": ["POST /v1/sessions", "POST /v1/execute"],
         "generation": {"max-examples": 10}},
        # A cell, or a kernel restart, on the live session: up to a few seconds each.
        {"include-name": ["POST /v1/sessions/{session_id}/execute",
                          "POST /v1/sessions/{session_id}/restart"],
         "generation": {"max-examples": 40}},
        {"include-path-regex": "/files",
         "checks": {"positive_data_acceptance": {"expected-statuses": [
             "2xx", "3xx", 401, 403, 404, 409, 429, "5xx", 413,
             # GAP: a file path that is absolute, has a '..' component or a NUL, names
             # the working directory itself (only for a file) or is over 1024 bytes (or
             # a component over 255) is a 400 unsafe_path; the schema says any string.
             # No JSON Schema pattern says it exactly (lengths are in bytes).
             400]}}},
    ],
})
schema = schemathesis.openapi.from_dict(documented(), config=CONFIG)
SENT: Counter[tuple[str, int]] = Counter()  # (operation, status) of every request sent


@schema.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    SENT[(f"{case.method} {case.path}", response.status_code)] += 1


def our_containers(engine: Any) -> list[str]:
    labels = [f"{LABEL_APP}=agentbox", f"{LABEL_OWNER_PID}={os.getpid()}"]
    return sorted(c.name for c in engine.containers.list(all=True, filters={"label": labels}))


@pytest.fixture(scope="module")
def fuzz_server(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(make_settings(tmp_path_factory.mktemp("fuzz-data"), **LIMITS)) as url:
        yield url


@pytest.fixture(scope="module")
def before(engine: Any, fuzz_server: str) -> list[str]:
    """This process's containers before the fuzzer ran (pool_size is 0: none of the
    server's own)."""
    return our_containers(engine)


@pytest.fixture(scope="module")
def live_session(fuzz_server: str, before: list[str]) -> str:
    with httpx.Client(base_url=fuzz_server, headers=AUTH, timeout=60) as client:
        resp = client.post("/v1/sessions", json={"metadata": {"fuzz": "live"}})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])


def delete_sessions(url: str, keep: str | None = None) -> list[str]:
    """DELETE every session of KEY_A (but *keep*); their ids."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        listed = client.get("/v1/sessions")
        assert listed.status_code == 200, listed.text
        ids = [s["id"] for s in listed.json()["sessions"] if s["id"] != keep]
        for sid in ids:
            assert client.delete(f"/v1/sessions/{sid}").status_code in (204, 404)
    return ids


def test_the_fuzzed_schema_is_the_served_one(fuzz_server: str) -> None:
    assert httpx.get(f"{fuzz_server}/openapi.json").json() == SERVED


def test_the_schema_says_how_to_authenticate_and_what_is_not_json() -> None:
    # Once gaps of SCHEMA_GAPS, now documented by the server itself.
    assert SERVED["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    v1 = [(path, method, op) for path, methods in SERVED["paths"].items()
          if path.startswith("/v1/") for method, op in methods.items()]
    assert len(v1) >= 12
    for path, method, op in v1:
        assert op.get("security") == [{"bearer": []}], (method, path)
    for path in ("/healthz", "/metrics"):  # no auth there
        assert "security" not in SERVED["paths"][path]["get"], path
    assert list(SERVED["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain"]
    upload = SERVED["paths"]["/v1/sessions/{session_id}/files/{path}"]["put"]["requestBody"]
    assert list(upload["content"]) == ["application/octet-stream"]
    files = SERVED["paths"]["/v1/sessions/{session_id}/files"]["get"]["responses"]
    assert "409" in files and "429" in SERVED["paths"]["/v1/execute"]["post"]["responses"]
    for path in ("/v1/sessions", "/v1/execute", "/v1/sessions/{session_id}/execute"):
        assert "400" in SERVED["paths"][path]["post"]["responses"], path


@pytest.mark.parametrize("gap", SCHEMA_GAPS, ids=lambda gap: gap[0][:60])
def test_each_schema_gap_is_still_open(gap: tuple[str, list[str], str, Any]) -> None:
    """When the server documents one of them, delete it from SCHEMA_GAPS."""
    _, where, key, value = gap
    assert at(SERVED, where).get(key) != value


@schema.parametrize()
@schema.given(live=st.booleans())
def test_api(case: Any, live: bool, fuzz_server: str, live_session: str) -> None:
    if live and "session_id" in (case.path_parameters or {}) and not (
            case.method == "DELETE" and case.path == "/v1/sessions/{session_id}"):
        case.path_parameters["session_id"] = live_session
    limits = case.body.get("limits") if isinstance(case.body, dict) else None
    cpus = limits.get("cpus") if isinstance(limits, dict) else None
    if isinstance(cpus, float) and 0 < cpus < MIN_CPUS:
        # Below 0.01 CPU is a known bug (see test_a_cpu_limit_* below); a little above,
        # the kernel takes 5 to 30 s to start, which the CI run cannot afford.
        limits["cpus"] = MIN_CPUS
    try:
        case.call_and_validate(base_url=fuzz_server)
    finally:
        if case.method == "POST" and case.path == "/v1/sessions":
            delete_sessions(fuzz_server, keep=live_session)


# Bugs the fuzzing found (or that CLI runs of schemathesis found with more examples and
# more phases than CI can afford), pinned: each fails while the bug is there.

def create_session(engine: Any, url: str, body: dict[str, Any]
                   ) -> tuple[httpx.Response, dict[str, Any]]:
    """POST /v1/sessions; the answer and the container's HostConfig (session deleted)."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
        resp = client.post("/v1/sessions", json=body)
        host_config: dict[str, Any] = {}
        if resp.status_code == 201:
            sid = resp.json()["id"]
            found = engine.containers.list(filters={"label": f"{LABEL_SESSION}={sid}"})
            host_config = found[0].attrs["HostConfig"] if found else {}
            client.delete(f"/v1/sessions/{sid}")
    return resp, host_config


def test_a_cpu_limit_too_small_to_enforce_is_refused(engine: Any, fuzz_server: str) -> None:
    resp, host_config = create_session(engine, fuzz_server, {"limits": {"cpus": 1e-10}})
    assert resp.status_code == 422, (resp.status_code, host_config.get("NanoCpus"))


def test_a_cpu_limit_below_dockers_minimum_is_a_client_error(engine: Any, fuzz_server: str) -> None:
    resp, _ = create_session(engine, fuzz_server, {"limits": {"cpus": 0.001}})
    assert resp.status_code == 422, resp.text


def test_an_env_name_with_a_newline_is_refused(engine: Any, fuzz_server: str) -> None:
    resp, _ = create_session(engine, fuzz_server, {"env": {"A\n": "x"}})
    assert resp.status_code == 422, resp.text


def test_a_405_says_which_methods_are_allowed(fuzz_server: str) -> None:
    resp = httpx.request("TRACE", f"{fuzz_server}/healthz")
    assert resp.status_code == 405
    assert resp.headers.get("allow") == "GET", dict(resp.headers)


def test_a_401_names_the_scheme_to_use(fuzz_server: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic eDp5"}):
        resp = httpx.get(f"{fuzz_server}/v1/sessions", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.headers.get("www-authenticate", "").startswith("Bearer"), dict(resp.headers)
        assert resp.json()["error"]["code"] == "unauthorized"


def test_the_fuzzer_left_no_session_and_no_container(
        engine: Any, fuzz_server: str, before: list[str], live_session: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        operations = sorted({op for op, _ in SENT})
        print(f"\nfuzz: {SENT.total()} requests to {len(operations)} operations")
        for op in operations:
            statuses = ", ".join(f"{status}×{n}" for (o, status), n in sorted(SENT.items())
                                 if o == op)
            print(f"  {op}: {statuses}")
    deleted = delete_sessions(fuzz_server)
    assert live_session in deleted
    with httpx.Client(base_url=fuzz_server, headers=AUTH) as client:
        assert client.get("/v1/sessions").json() == {"sessions": []}
    assert our_containers(engine) == before
