"""The service's own lifecycle: restart with history, graceful stop, crash and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nbformat
import pytest

from api.server.settings import Settings
from sandbox._config import default_base_dir
from sandbox._gc import sweep_orphans
from sandbox._runtime.dockerd import default_runtime
from tests.api.conftest import KEY_A, free_port, make_settings, run_server

pytestmark = pytest.mark.usefixtures("engine")
AUTH = {"Authorization": f"Bearer {KEY_A}"}


def containers_of(engine: object, session_id: str) -> list[object]:
    return engine.containers.list(  # type: ignore[attr-defined,no-any-return]
        all=True, filters={"label": f"org.agentbox.session={session_id}"})


def test_history_and_notebook_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_server(make_settings(data)) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        sid = client.post("/v1/sessions").json()["id"]
        client.post(f"/v1/sessions/{sid}/execute", json={"code": "n = 6 * 7"})
        client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(n)"})
    assert (data / "history.sqlite3").exists()
    with run_server(make_settings(data)) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        assert client.get(f"/v1/sessions/{sid}").status_code == 404  # its box is gone...
        resp = client.get(f"/v1/sessions/{sid}/notebook")  # ...its history is not
        assert resp.status_code == 200
        nb = nbformat.reads(resp.text, as_version=4)
        nbformat.validate(nb)
        assert [c.source for c in nb.cells] == ["n = 6 * 7", "print(n)"]
        assert nb.cells[1].outputs[0]["text"] == "42\n"


def test_graceful_stop_ends_running_cells_and_leaves_no_container(engine: object,
                                                                   tmp_path: Path) -> None:
    import threading

    results: dict[str, object] = {}
    client = httpx.Client(headers=AUTH, timeout=60)
    try:
        with run_server(make_settings(tmp_path)) as url:
            sid = client.post(f"{url}/v1/sessions").json()["id"]

            def long_cell() -> None:
                try:
                    results["r"] = client.post(f"{url}/v1/sessions/{sid}/execute",
                                               json={"code": "import time; time.sleep(120)"})
                except httpx.HTTPError as exc:
                    results["r"] = exc

            worker = threading.Thread(target=long_cell)
            worker.start()
            time.sleep(1)
            assert containers_of(engine, sid)
        worker.join(60)
    finally:
        client.close()
    assert not worker.is_alive()  # the running cell did not hold the shutdown for 120 s
    response = results["r"]
    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert response.json()["error"]["ename"] == "KeyboardInterrupt"  # interrupted, answered
    assert containers_of(engine, sid) == []


def start_serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], httpx.Client, str]:
    """`agentbox serve` as a real process, with one session that ran a cell."""
    port = free_port()
    env = {**os.environ, "AGENTBOX_API_KEYS": KEY_A, "AGENTBOX_DATA_DIR": str(tmp_path),
           "AGENTBOX_POOL_SIZE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/healthz").json().get("pool") == 1:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
        time.sleep(0.2)
    sid = client.post("/v1/sessions").json()["id"]
    client.post(f"/v1/sessions/{sid}/execute", json={"code": "x = 1"})
    return proc, client, sid


def wait_for_containers(engine: object, pid: int, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(owned_by(engine, pid)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} containers of pid {pid}"
        time.sleep(0.2)


def owned_by(engine: object, pid: int) -> list[object]:
    return engine.containers.list(  # type: ignore[attr-defined,no-any-return]
        all=True, filters={"label": f"org.agentbox.owner-pid={pid}"})


def test_sigterm_stops_cleanly_with_exit_0(engine: object, tmp_path: Path) -> None:
    proc, client, _ = start_serve(tmp_path)
    try:
        wait_for_containers(engine, proc.pid, 2)  # the session, and the refilled pool kernel
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
            asyncio.run(sweep_orphans(default_runtime(), default_base_dir()))
    assert owned_by(engine, proc.pid) == []


def test_a_sigkilled_server_leaves_nothing_after_the_next_start(engine: object,
                                                                tmp_path: Path) -> None:
    proc, client, _ = start_serve(tmp_path)
    client.close()
    wait_for_containers(engine, proc.pid, 2)  # the session, and the refilled pool kernel
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert len(owned_by(engine, proc.pid)) >= 2  # its session and pooled kernel survived
    with run_server(make_settings(tmp_path)):
        pass  # start-up sweeps before serving
    assert owned_by(engine, proc.pid) == []


def test_listening_beyond_loopback_needs_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without API keys"):
        Settings(host="0.0.0.0", data_dir=tmp_path)
    assert Settings(host="0.0.0.0", api_keys="k", data_dir=tmp_path).auth_enabled
    proc = subprocess.run([sys.executable, "-m", "sandbox.cli", "serve", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("AGENTBOX_API_KEYS", "AGENTBOX_API_KEYS_FILE")})
    assert proc.returncode == 2 and "without API keys" in proc.stderr


def test_default_sessions_come_from_the_warm_pool(tmp_path: Path) -> None:
    with run_server(make_settings(tmp_path, pool_size=1)) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["pool"] < 1:
            assert time.monotonic() < deadline, "the pool did not fill"
            time.sleep(0.1)
        pooled = client.post("/v1/sessions").json()
        custom = client.post("/v1/sessions", json={"limits": {"memory_mb": 512}}).json()
        assert pooled["from_pool"] is True and custom["from_pool"] is False
        for sid in (pooled["id"], custom["id"]):
            client.delete(f"/v1/sessions/{sid}")
