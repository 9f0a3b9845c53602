"""The result's wire shape is declared once (ExecuteResponse): the core's to_dict, the
server's fast path (wire_result, no validation pass) and the client's parser agree."""

from __future__ import annotations

from typing import Any

import pytest

from api import _sse
from api.client import _feed
from api.server.schemas import ExecuteResponse, wire_result
from sandbox import (
    DisplayOutput,
    ErrorOutput,
    ExecutionResult,
    KernelDeath,
    StreamOutput,
    TimeoutInfo,
)

PNG = "iVBORw0KGgo="
RESULTS = {
    "ok": ExecutionResult("ok", 1, [StreamOutput("stdout", "hi\n"), DisplayOutput(
        "execute_result", {"text/plain": "2"}, {}, execution_count=1)], 0.0123),
    "display": ExecutionResult("ok", 2, [
        DisplayOutput("display_data", {"image/png": PNG, "text/plain": "<Figure>"},
                      {"image/png": {"width": 10}}, display_id="d1"),
        StreamOutput("stderr", "warn\n")], 0.5, notes=["a note"]),
    "error": ExecutionResult("error", 3, [ErrorOutput("ZeroDivisionError", "division by zero",
                                                      ["Traceback", "ZeroDivisionError"])], 0.001),
    "timeout": ExecutionResult("timeout", None, [], 2.0, truncated=True,
                               timeout=TimeoutInfo(2.0, "restart", True), kernel_restarted=True),
    "died": ExecutionResult("died", None, [], 0.2,
                            death=KernelDeath("out of memory", 137, 9, oom_killed=True)),
}


def validated(body: dict[str, Any]) -> dict[str, Any]:
    return ExecuteResponse.model_validate(body).model_dump(mode="json")


@pytest.mark.parametrize("name", RESULTS)
def test_the_fast_path_answers_what_the_response_model_would(name: str) -> None:
    body = RESULTS[name].to_dict()
    assert wire_result(body) == validated(body)


@pytest.mark.parametrize("name", RESULTS)
def test_the_client_reads_back_what_the_core_wrote(name: str) -> None:
    result = RESULTS[name]
    wire = wire_result(result.to_dict())
    assert ExecutionResult.from_dict(wire).to_dict() == result.to_dict()
    parser, item = _sse.Parser(), None  # the same, through an event stream
    for line in _sse.frame("result", wire).split("\n"):
        item = _feed(parser, line) or item
    assert isinstance(item, ExecutionResult) and item.to_dict() == result.to_dict()


def test_the_response_model_declares_every_key_of_the_core_result() -> None:
    keys = set(RESULTS["ok"].to_dict())
    assert keys == set(ExecuteResponse.model_fields)
