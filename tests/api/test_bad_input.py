"""Auth isolation and bad input: the right 4xx, the documented error shape, nothing changed."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.api.conftest import KEY_A

pytestmark = pytest.mark.usefixtures("engine")


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


def test_missing_and_invalid_keys_are_401(server: str) -> None:
    with httpx.Client(base_url=server) as anon:
        assert error_of(anon.get("/v1/sessions"), 401) == "unauthorized"
        assert error_of(anon.post("/v1/sessions", headers={"Authorization": "Bearer nope"}),
                        401) == "unauthorized"
        assert error_of(anon.post("/v1/execute", json={"code": "1"},
                                  headers={"Authorization": f"Basic {KEY_A}"}), 401)


def test_another_keys_session_is_invisible(client_a: httpx.Client, client_b: httpx.Client,
                                           session_a: str) -> None:
    base = f"/v1/sessions/{session_a}"
    client_a.put(f"{base}/files/secret.txt", content=b"a's data")
    for method, path, kw in [
        ("GET", base, {}), ("DELETE", base, {}), ("POST", f"{base}/interrupt", {}),
        ("POST", f"{base}/restart", {}), ("POST", f"{base}/execute", {"json": {"code": "1"}}),
        ("GET", f"{base}/files", {}), ("GET", f"{base}/files/secret.txt", {}),
        ("PUT", f"{base}/files/x.txt", {"content": b"x"}),
        ("DELETE", f"{base}/files/secret.txt", {}), ("GET", f"{base}/notebook", {}),
    ]:
        assert error_of(client_b.request(method, path, **kw), 404) == "session_not_found"
    assert session_a not in [s["id"] for s in client_b.get("/v1/sessions").json()["sessions"]]
    assert client_a.get(f"{base}/files/secret.txt").content == b"a's data"  # untouched


def test_malformed_and_mistyped_bodies(client_a: httpx.Client, session_a: str) -> None:
    before = client_a.get("/v1/sessions").json()
    url = f"/v1/sessions/{session_a}/execute"
    assert error_of(client_a.post(url, content=b"{not json",
                                  headers={"content-type": "application/json"}),
                    422) == "invalid_request"
    assert error_of(client_a.post(url, json={"code": 42}), 422) == "invalid_request"
    assert error_of(client_a.post(url, json={}), 422) == "invalid_request"
    assert error_of(client_a.post(url, json={"code": "1", "bogus": 1}), 422)
    assert error_of(client_a.post(url, json={"code": "1", "timeout_s": -1}), 422)
    assert error_of(client_a.post(url, json={"code": "print(1)\n# \x00"}),
                    422) == "invalid_settings"  # NUL: no Python source can hold it
    assert error_of(client_a.post("/v1/sessions", json={"limits": {"memory_mb": "lots"}}), 422)
    assert error_of(client_a.post("/v1/sessions", json={"env": {"PATH": "/evil"}}),
                    422) == "invalid_settings"
    assert error_of(client_a.post("/v1/sessions", json={"env": {"BAD-NAME": "x"}}), 422)
    assert client_a.get("/v1/sessions").json() == before  # nothing was created


def test_limits_above_the_server_maximum_say_the_maximum(client_a: httpx.Client) -> None:
    resp = client_a.post("/v1/sessions", json={"limits": {"memory_mb": 10**6}})
    assert error_of(resp, 422) == "limit_exceeded"
    assert "4096" in resp.json()["error"]["message"]
    resp = client_a.post("/v1/sessions", json={"limits": {"execution_timeout_s": 10**5}})
    assert "600" in resp.json()["error"]["message"]


def test_unknown_session_and_routes(client_a: httpx.Client) -> None:
    assert error_of(client_a.get("/v1/sessions/s-000000000000"), 404) == "session_not_found"
    assert error_of(client_a.post("/v1/sessions/nope/execute", json={"code": "1"}), 404)
    assert error_of(client_a.get("/v1/nothing-here"), 404) == "not_found"
    assert error_of(client_a.patch("/v1/sessions"), 405)


def test_huge_bodies_are_413(client_a: httpx.Client, session_a: str) -> None:
    url = f"/v1/sessions/{session_a}/execute"
    assert error_of(client_a.post(url, json={"code": "x" * 20_000}), 413) == "code_too_large"
    assert error_of(client_a.post(url, json={"code": "1", "pad": "y" * 100_000}), 413)
    upload = f"/v1/sessions/{session_a}/files/big.bin"
    assert error_of(client_a.put(upload, content=b"z" * 100_001), 413)

    def chunks() -> object:  # no Content-Length: the limit holds while streaming
        for _ in range(30):
            yield b"z" * 10_000

    assert error_of(client_a.put(upload, content=chunks()), 413)  # type: ignore[arg-type]
    assert "big.bin" not in [f["path"] for f in
                             client_a.get(f"/v1/sessions/{session_a}/files").json()["files"]]


@pytest.mark.parametrize("path", ["..%2f..%2fetc%2fpasswd", "a/..%2f..%2fx", "%2fetc%2fpasswd",
                                  "a%00b", "x" * 300])
def test_path_traversal_is_refused(client_a: httpx.Client, session_a: str, path: str) -> None:
    base = f"/v1/sessions/{session_a}/files"
    code = error_of(client_a.get(f"{base}/{path}"), 400)
    assert code == "unsafe_path"
    assert error_of(client_a.put(f"{base}/{path}", content=b"x"), 400) == "unsafe_path"


def test_planted_symlink_download_is_refused(client_a: httpx.Client, session_a: str) -> None:
    client_a.post(f"/v1/sessions/{session_a}/execute",
                  json={"code": "import os; os.symlink('/etc/passwd', 'pw')"})
    assert error_of(client_a.get(f"/v1/sessions/{session_a}/files/pw"), 403) == "file_symlink"


def test_concurrent_execute_on_one_session_is_409(client_a: httpx.Client,
                                                   session_a: str) -> None:
    url = f"/v1/sessions/{session_a}/execute"
    slow = threading.Thread(target=lambda: client_a.post(url, json={"code": "import time; "
                                                                      "time.sleep(2)"}))
    slow.start()
    time.sleep(0.7)
    assert error_of(client_a.post(url, json={"code": "1"}), 409) == "session_busy"
    slow.join(30)


def test_per_key_session_cap_is_429(client_b: httpx.Client) -> None:
    made = []
    try:
        for _ in range(3):
            resp = client_b.post("/v1/sessions")
            assert resp.status_code == 201
            made.append(resp.json()["id"])
        resp = client_b.post("/v1/sessions")
        assert error_of(resp, 429) == "capacity"
        assert "maximum per key" in resp.json()["error"]["message"]
    finally:
        for sid in made:
            client_b.delete(f"/v1/sessions/{sid}")
