"""Every route of the v1 contract against a real server and real sandboxes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import nbformat
import pytest

from sandbox._uids import UID_BASE

pytestmark = pytest.mark.usefixtures("engine")


def test_session_lifecycle_routes(client_a: httpx.Client) -> None:
    created = client_a.post("/v1/sessions", json={"limits": {"memory_mb": 512, "cpus": 0.5},
                                                  "metadata": {"team": "data"}})
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "ready" and body["metadata"] == {"team": "data"}
    assert body["limits"]["memory_mb"] == 512 and body["limits"]["cpus"] == 0.5
    sid = body["id"]
    assert client_a.get(f"/v1/sessions/{sid}").json()["id"] == sid
    listed = client_a.get("/v1/sessions", params={"metadata.team": "data"}).json()["sessions"]
    assert [s["id"] for s in listed] == [sid]
    assert client_a.get("/v1/sessions", params={"metadata.team": "ops"}).json() == {
        "sessions": []}
    limit = client_a.post(f"/v1/sessions/{sid}/execute", json={
        "code": "int(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read()) // 2**20"})
    assert limit.json()["outputs"][0]["data"]["text/plain"] == "512"
    assert client_a.delete(f"/v1/sessions/{sid}").status_code == 204
    assert client_a.get(f"/v1/sessions/{sid}").status_code == 404


def test_execute_returns_jupyter_shaped_results(client_a: httpx.Client, session_a: str) -> None:
    url = f"/v1/sessions/{session_a}/execute"
    ok = client_a.post(url, json={"code": "print('hi')\nimport pandas as pd\n"
                                          "pd.DataFrame({'a': [1, 2]})"}).json()
    assert ok["status"] == "ok" and ok["stdout"] == "hi\n" and ok["error"] is None
    result = ok["outputs"][-1]
    assert result["type"] == "execute_result"
    assert "text/html" in result["data"]
    assert result["data"]["application/vnd.agentbox.dataframe+json"]["shape"] == [2, 1]
    plot = client_a.post(url, json={"code": "import matplotlib.pyplot as plt; plt.plot([1, 2])"
                                            "; None"}).json()
    assert plot["outputs"][0]["type"] == "display_data"
    assert plot["outputs"][0]["data"]["image/png"].startswith("iVBORw0KGgo")  # base64 PNG
    err = client_a.post(url, json={"code": "1/0"})
    assert err.status_code == 200  # an error in the code is a result, not an HTTP error
    assert err.json()["status"] == "error" and err.json()["error"]["ename"] == "ZeroDivisionError"
    slow = client_a.post(url, json={"code": "while True: pass", "timeout_s": 1}).json()
    assert slow["status"] == "timeout" and slow["timeout"]["ended_by"] == "interrupt"


def test_interrupt_and_restart(client_a: httpx.Client, session_a: str) -> None:
    url = f"/v1/sessions/{session_a}"
    client_a.post(f"{url}/execute", json={"code": "x = 1"})
    box: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: box.update(r=client_a.post(
        f"{url}/execute", json={"code": "import time; time.sleep(30)"})))
    worker.start()
    time.sleep(1)
    assert client_a.post(f"{url}/interrupt").status_code == 204
    worker.join(20)
    assert box["r"].json()["error"]["ename"] == "KeyboardInterrupt"
    assert client_a.post(f"{url}/restart").status_code == 200
    after = client_a.post(f"{url}/execute", json={"code": "'x' in dir()"}).json()
    assert after["outputs"][0]["data"]["text/plain"] == "False"


def test_streaming_sends_each_output_before_the_cell_ends(client_a: httpx.Client,
                                                          session_a: str) -> None:
    t0 = time.monotonic()
    events: list[tuple[float, str, str]] = []
    with client_a.stream("POST", f"/v1/sessions/{session_a}/execute",
                         headers={"Accept": "text/event-stream"},
                         json={"code": "import time\nprint('first')\ntime.sleep(2)\n"
                                       "print('second')"}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((time.monotonic() - t0, kind, line.removeprefix("data: ")))
            elif line.startswith(":"):
                events.append((time.monotonic() - t0, "comment", line))
    outputs = [e for e in events if e[1] == "output"]
    result = [e for e in events if e[1] == "result"]
    assert json.loads(outputs[0][2])["text"] == "first\n"
    assert outputs[0][0] < result[0][0] - 1.5
    assert any(e[1] == "comment" for e in events)  # keep-alives during the silent sleep
    assert json.loads(result[0][2])["stdout"] == "first\nsecond\n"


def test_a_client_that_disconnects_mid_cell_does_not_leave_the_kernel_busy(
        client_a: httpx.Client, session_a: str) -> None:
    url = f"/v1/sessions/{session_a}/execute"
    with client_a.stream("POST", url, headers={"Accept": "text/event-stream"},
                         json={"code": "import time\nprint('go')\ntime.sleep(60)"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break  # got the first output: hang up
    t0 = time.monotonic()
    while True:  # the session is free again within a few seconds, not 60
        after = client_a.post(url, json={"code": "'free'"})
        if after.status_code == 200:
            break
        assert after.status_code == 409 and time.monotonic() - t0 < 10
        time.sleep(0.2)
    assert after.json()["outputs"][0]["data"]["text/plain"] == "'free'"
    assert time.monotonic() - t0 < 10


def test_file_routes(client_a: httpx.Client, session_a: str) -> None:
    base = f"/v1/sessions/{session_a}/files"
    assert client_a.put(f"{base}/in/data.csv", content=b"a,b\n1,2\n").status_code == 204
    listing = client_a.get(base).json()["files"]
    assert {k: listing[1][k] for k in ("path", "size")} == {"path": "in/data.csv", "size": 8}
    client_a.post(f"/v1/sessions/{session_a}/execute", json={
        "code": "import pandas as pd; pd.read_csv('in/data.csv').to_json('out.json')"})
    got = client_a.get(f"{base}/out.json")
    assert got.status_code == 200 and json.loads(got.content) == {"a": {"0": 1}, "b": {"0": 2}}
    assert client_a.delete(f"{base}/in/data.csv").status_code == 204
    assert client_a.get(f"{base}/in/data.csv").status_code == 404


def test_notebook_export_is_valid_and_outlives_the_session(client_a: httpx.Client) -> None:
    sid = client_a.post("/v1/sessions").json()["id"]
    for code in ("a = 2", "print(a * 21)", "import matplotlib.pyplot as plt; plt.plot([1])"):
        client_a.post(f"/v1/sessions/{sid}/execute", json={"code": code})
    client_a.delete(f"/v1/sessions/{sid}")
    resp = client_a.get(f"/v1/sessions/{sid}/notebook")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ipynb+json")
    nb = nbformat.reads(resp.text, as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["a = 2", "print(a * 21)",
                                            "import matplotlib.pyplot as plt; plt.plot([1])"]
    assert nb.cells[1].outputs[0]["text"] == "42\n"
    assert "image/png" in nb.cells[2].outputs[-1]["data"]


def test_one_shot_execute_leaves_no_session(client_a: httpx.Client) -> None:
    before = client_a.get("/v1/sessions").json()["sessions"]
    resp = client_a.post("/v1/execute", json={"code": "import os; os.getuid()"})
    assert resp.status_code == 200
    assert int(resp.json()["outputs"][0]["data"]["text/plain"]) >= UID_BASE  # its own uid
    assert client_a.get("/v1/sessions").json()["sessions"] == before


def test_health_metrics_and_docs(client_a: httpx.Client, server: str) -> None:
    with httpx.Client(base_url=server) as anon:
        health = anon.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["image_present"] is True
        metrics = anon.get("/metrics").text
        for name in ("agentbox_sessions_active", "agentbox_executions_total",
                     "agentbox_execution_duration_seconds_bucket", "agentbox_pool_ready",
                     "agentbox_kernel_deaths_total", "agentbox_timeouts_total"):
            assert name in metrics
        spec = anon.get("/openapi.json").json()
        assert "/v1/sessions/{session_id}/execute" in spec["paths"]
        assert anon.get("/docs").status_code == 200


def test_logs_are_structured_and_never_hold_code_output_or_keys(
        client_a: httpx.Client, session_a: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from api.server.middleware import JsonLines
    from tests.api.conftest import KEY_A

    route = "/v1/sessions/{session_id}/execute"

    def parsed_records() -> tuple[list[str], list[dict[str, object]]]:
        lines = [JsonLines().format(r) for r in caplog.records if r.name == "agentbox.api"]
        return lines, [json.loads(line) for line in lines]

    with caplog.at_level(logging.INFO, logger="agentbox.api"):
        client_a.post(f"/v1/sessions/{session_a}/execute",
                      json={"code": "secret = 'code-canary-91'\nprint('output-canary-37')"})
        # The access line is written once the response is sent, so it may come after the
        # client has its answer (and an earlier request's line may come inside this
        # window): wait for this request's own line, by its route.
        deadline = time.monotonic() + 10
        while not any(p["msg"] == "request" and p.get("route") == route
                      for p in parsed_records()[1]):
            assert time.monotonic() < deadline, "no access-log line for the execute"
            time.sleep(0.01)
    lines, parsed = parsed_records()
    execution = next(p for p in parsed if p["msg"] == "execution")
    assert execution["session_id"] == session_a and execution["status"] == "ok"
    assert isinstance(execution["duration_ms"], int | float) and execution["duration_ms"] > 0
    request = next(p for p in parsed if p["msg"] == "request" and p.get("route") == route)
    assert request["method"] == "POST" and request["status"] == 200
    text = "\n".join(lines)
    for secret in ("code-canary-91", "output-canary-37", KEY_A):
        assert secret not in text
