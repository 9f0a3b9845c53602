"""A real Agent Box server (uvicorn, real engine) on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from api.server.serve import server_for
from api.server.settings import Settings

KEY_A, KEY_B = "key-a-secret", "key-b-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def run_server(settings: Settings) -> Iterator[str]:
    """Serve create_app(settings) in a thread; yields its base URL; graceful stop."""
    server = server_for(settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "server thread died at start-up"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def make_settings(data_dir: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"data_dir": data_dir, "port": free_port(), "pool_size": 0,
                                 "api_keys": f"{KEY_A},{KEY_B}", "reaper_interval_s": 0.5}
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("api-data"), keepalive_s=0.3,
                             max_sessions_per_key=3, max_code_bytes=10_000,
                             max_upload_bytes=100_000, max_request_bytes=50_000)
    with run_server(settings) as url:
        yield url


@pytest.fixture
def client_a(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120,
                      headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        yield client


@pytest.fixture
def client_b(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120,
                      headers={"Authorization": f"Bearer {KEY_B}"}) as client:
        yield client


@pytest.fixture
def session_a(client_a: httpx.Client) -> Iterator[str]:
    resp = client_a.post("/v1/sessions", json={"metadata": {"test": "yes"}})
    assert resp.status_code == 201, resp.text
    sid = str(resp.json()["id"])
    yield sid
    client_a.delete(f"/v1/sessions/{sid}")
