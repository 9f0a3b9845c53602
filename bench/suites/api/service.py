"""The API side of the API suite: the real service in a thread, and the HTTP calls
made to it (each timed from the request to the parsed answer)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from api.server.middleware import JsonLines
from api.server.serve import server_for
from api.server.settings import Settings
from bench.harness.cells import check_api
from bench.harness.errors import BenchError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """``server_for(Settings(...))`` run by uvicorn in a daemon thread with its own loop."""

    def __init__(self, data_dir: Path, pool_size: int) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        # Explicit empty keys and database: AGENTBOX_* variables must not change the setup.
        self.settings = Settings(data_dir=data_dir, port=self.port, pool_size=pool_size,
                                 api_keys="", api_keys_file=None, database_url=None)
        self.server = server_for(self.settings, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name=f"agentbox-api-{self.port}")
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise BenchError("the API server stopped during start-up (see its log above)")
            if time.monotonic() > end:
                raise BenchError(f"the API server did not start in {timeout:.0f}s")
            await asyncio.sleep(0.01)

    async def stop(self, timeout: float = 60.0) -> None:
        """uvicorn's shutdown, then the lifespan: every session closed, history flushed."""
        if not self.thread.is_alive():
            return
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, timeout)
        if self.thread.is_alive():
            raise BenchError(f"the API server did not stop in {timeout:.0f}s")

    @property
    def history_db(self) -> Path:
        return self.data_dir / "history.sqlite3"


class Http:
    """One keep-alive ``httpx.Client`` and the calls the suite times (blocking by design:
    the server answers from its own thread and loop)."""

    def __init__(self, outputs: dict[str, Any]) -> None:
        self.ports: dict[int, set[int]] = {}  # server port -> client ports seen (keep-alive)
        self.client = httpx.Client(timeout=120.0, event_hooks={"response": [self._saw]})
        self.executes = 0
        self.outputs = outputs  # code -> bytes received, events
        self.last_body: dict[str, dict[str, Any]] = {}

    def _saw(self, response: Any) -> None:
        stream = response.extensions.get("network_stream")
        client_addr = stream.get_extra_info("client_addr") if stream is not None else None
        if client_addr:
            self.ports.setdefault(response.url.port, set()).add(client_addr[1])

    def close(self) -> None:
        self.client.close()

    def create(self, server: ApiServer) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        r = self.client.post(f"{server.base}/v1/sessions", json={})
        body: dict[str, Any] = r.json()
        elapsed = time.perf_counter() - t0
        if r.status_code != 201:
            raise BenchError(f"POST /v1/sessions answered {r.status_code}: {r.text[:300]}")
        return elapsed, body

    def delete(self, server: ApiServer, sid: str) -> float:
        t0 = time.perf_counter()
        r = self.client.delete(f"{server.base}/v1/sessions/{sid}")
        elapsed = time.perf_counter() - t0
        if r.status_code != 204:
            raise BenchError(f"DELETE /v1/sessions/{sid} answered {r.status_code}: {r.text[:300]}")
        return elapsed

    def execute_json(self, server: ApiServer, sid: str, code: str) -> float:
        """Request to parsed JSON result."""
        t0 = time.perf_counter()
        r = self.client.post(f"{server.base}/v1/sessions/{sid}/execute", json={"code": code})
        body = r.json()
        elapsed = time.perf_counter() - t0
        self.executes += 1
        if r.status_code != 200:
            raise BenchError(f"execute answered {r.status_code}: {r.text[:300]}")
        check_api(code, body)
        self.last_body[code] = body
        self.outputs.setdefault(code, {})["json_bytes"] = len(r.content)
        return elapsed

    def execute_sse(self, server: ApiServer, sid: str, code: str) -> float:
        """Request to the parsed data of ``event: result``; the rest of the stream (its end)
        is read after the clock stops, so that the connection is kept for the next call."""
        url = f"{server.base}/v1/sessions/{sid}/execute"
        events: list[str] = []
        body: dict[str, Any] | None = None
        event = ""
        t0 = time.perf_counter()
        with self.client.stream("POST", url, json={"code": code},
                                headers={"Accept": "text/event-stream"}) as r:
            if r.status_code != 200:
                r.read()
                raise BenchError(f"execute (SSE) answered {r.status_code}: {r.text[:300]}")
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("event: "):
                    event = line[7:]
                    events.append(event)
                elif line.startswith("data: ") and event in ("result", "error"):
                    body = json.loads(line[6:])
                    break
            elapsed = time.perf_counter() - t0
            for _ in lines:  # drain: the end of the chunked body
                pass
            self.executes += 1
            sse_bytes = r.num_bytes_downloaded
        if body is None or event != "result":
            raise BenchError(f"the event stream ended without a result (events {events}, {body})")
        check_api(code, body)
        self.outputs.setdefault(code, {}).update(
            sse_bytes=sse_bytes, sse_output_events=events.count("output"))
        return elapsed

    def get(self, server: ApiServer, sid: str) -> float:
        t0 = time.perf_counter()
        r = self.client.get(f"{server.base}/v1/sessions/{sid}")
        r.json()
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise BenchError(f"GET /v1/sessions/{sid} answered {r.status_code}")
        return elapsed

    def pool_level(self, server: ApiServer) -> int:
        r = self.client.get(f"{server.base}/healthz")
        if r.status_code != 200:
            raise BenchError(f"/healthz answered {r.status_code}: {r.text[:300]}")
        return int(r.json()["pool"])


def history_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])


def production_logging() -> None:
    """As ``agentbox serve`` does: INFO, one JSON line per request and per execution (here
    to an in-memory sink, so the formatting is paid and the terminal stays quiet)."""
    handler = logging.StreamHandler(_Sink())
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("agentbox.api")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False


class _Sink(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)
