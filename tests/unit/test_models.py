"""ExecutionResult: the accessors a caller reads a cell's outcome through."""

from __future__ import annotations

import base64
from typing import Any

from sandbox._models import (
    DATAFRAME_MIME,
    DisplayOutput,
    ErrorOutput,
    ExecutionResult,
    KernelDeath,
    Output,
    StreamOutput,
    TimeoutInfo,
)

PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR-not-really"
SVG = '<svg xmlns="http://www.w3.org/2000/svg"><text>é</text></svg>'
FRAME = {"shape": [2, 1], "columns": ["a"], "dtypes": ["int64"], "rows": [[1], [2]]}


def result(*outputs: Output, **kwargs: Any) -> ExecutionResult:
    kwargs.setdefault("status", "ok")
    kwargs.setdefault("execution_count", 3)
    kwargs.setdefault("duration_s", 0.25)
    return ExecutionResult(outputs=list(outputs), **kwargs)


def disp(data: dict[str, Any], kind: Any = "display_data", **kw: Any) -> DisplayOutput:
    return DisplayOutput(type=kind, data=data, **kw)


def test_stdout_and_stderr_join_their_own_streams_in_order() -> None:
    res = result(StreamOutput("stdout", "a\n"), StreamOutput("stderr", "warn\n"),
                 disp({"text/plain": "x"}), StreamOutput("stdout", "b\n"))
    assert res.stdout == "a\nb\n"
    assert res.stderr == "warn\n"
    assert result().stdout == "" and result().stderr == ""


def test_error_is_the_last_error_output_or_none() -> None:
    first = ErrorOutput("ValueError", "one", [])
    last = ErrorOutput("KeyError", "'k'", ["tb"])
    assert result(StreamOutput("stdout", "x")).error is None
    assert result(first, StreamOutput("stdout", "x"), last, status="error").error is last


def test_result_and_text_are_the_cells_value() -> None:
    value = disp({"text/plain": "42", "text/html": "<b>42</b>"}, "execute_result",
                 execution_count=3)
    res = result(disp({"text/plain": "shown"}), value)
    assert res.result is value
    assert res.text == "42"
    no_value = result(disp({"text/plain": "shown"}))
    assert no_value.result is None and no_value.text is None
    assert result(disp({"image/png": "AA=="}, "execute_result")).text is None


def test_html_lists_every_html_display() -> None:
    res = result(disp({"text/html": "<p>1</p>"}), disp({"text/plain": "no html"}),
                 disp({"text/html": "<p>2</p>"}, "execute_result"))
    assert res.html == ["<p>1</p>", "<p>2</p>"]


def test_images_decode_base64_and_give_svg_as_utf8() -> None:
    b64 = base64.b64encode(PNG_BYTES).decode()
    wrapped = "\n".join(b64[i:i + 8] for i in range(0, len(b64), 8)) + "\n"
    res = result(disp({"image/png": b64, "text/plain": "<Figure>"}),
                 StreamOutput("stdout", "x"),
                 disp({"image/svg+xml": SVG}),
                 disp({"image/png": wrapped}))
    assert res.images == [("image/png", PNG_BYTES), ("image/svg+xml", SVG.encode()),
                          ("image/png", PNG_BYTES)]


def test_dataframes_returns_the_structured_payloads() -> None:
    res = result(disp({"text/plain": "df", DATAFRAME_MIME: FRAME}),
                 disp({"text/plain": "no frame"}),
                 disp({DATAFRAME_MIME: "not an object"}))
    assert res.dataframes == [FRAME]


def test_to_dict_shape() -> None:
    res = result(StreamOutput("stdout", "out"), StreamOutput("stderr", "err"),
                 disp({"text/plain": "1"}, "execute_result", execution_count=3),
                 ErrorOutput("E", "v", ["line"]),
                 status="timeout", duration_s=1.2345678, truncated=True,
                 timeout=TimeoutInfo(limit_s=5, ended_by="restart", state_lost=True),
                 death=KernelDeath(reason="oom", exit_code=137, oom_killed=True),
                 kernel_restarted=True, notes=["n1"])
    d = res.to_dict()
    assert set(d) == {"status", "execution_count", "outputs", "stdout", "stderr", "error",
                      "duration_ms", "truncated", "timeout", "death", "kernel_restarted",
                      "notes"}
    assert d["status"] == "timeout" and d["execution_count"] == 3
    assert d["outputs"] == [
        {"type": "stream", "name": "stdout", "text": "out"},
        {"type": "stream", "name": "stderr", "text": "err"},
        {"type": "execute_result", "data": {"text/plain": "1"}, "metadata": {},
         "execution_count": 3},
        {"type": "error", "ename": "E", "evalue": "v", "traceback": ["line"]},
    ]
    assert (d["stdout"], d["stderr"]) == ("out", "err")
    assert d["error"] == {"ename": "E", "evalue": "v", "traceback": ["line"]}
    assert d["duration_ms"] == 1234.568
    assert d["truncated"] is True and d["kernel_restarted"] is True
    assert d["timeout"] == {"limit_s": 5, "ended_by": "restart", "state_lost": True,
                            "files_lost": False}
    assert d["death"]["oom_killed"] is True and d["death"]["exit_code"] == 137
    assert d["notes"] == ["n1"]
    d["notes"].append("x")
    assert res.notes == ["n1"]


def test_to_dict_of_a_plain_ok_result_has_nulls() -> None:
    d = result().to_dict()
    assert (d["error"], d["timeout"], d["death"]) == (None, None, None)
    assert d["outputs"] == [] and d["truncated"] is False
