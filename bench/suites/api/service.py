"""The API side of the API suite: the real service (``agentbox serve``, a process of its
own), and the HTTP calls made to it (each timed from the request to the parsed answer)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness.cells import check_api
from bench.harness.errors import BenchError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """``agentbox serve`` in a process of its own, as a user runs it (production logging,
    its own interpreter: the client's work here does not compete with it for a GIL)."""

    def __init__(self, data_dir: Path, pool_size: int) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.pool_size = pool_size
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the API server is not started")
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.data_dir / "server.log"

    def _env(self) -> dict[str, str]:
        # No AGENTBOX_* variable of the caller's may change the setup: no keys (loopback),
        # the default SQLite history under data_dir.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBOX_")}
        env.update(AGENTBOX_DATA_DIR=str(self.data_dir), AGENTBOX_PORT=str(self.port),
                   AGENTBOX_POOL_SIZE=str(self.pool_size), AGENTBOX_API_KEYS="")
        return env

    async def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("agentbox")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited on below
                [str(exe), "serve"], env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"the API server exited ({self.proc.returncode}) during "
                                     f"start-up: {self._tail()}")
                if time.monotonic() > end:
                    raise BenchError(f"the API server did not start in {timeout:.0f}s: {self._tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.base}/healthz")).status_code in (200, 503):
                        return
                await asyncio.sleep(0.05)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-1500:]
        return "(no log)"

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: uvicorn's shutdown, then the lifespan (every session closed, history
        flushed); exit 0 is a clean stop."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
            raise BenchError(f"the API server did not stop in {timeout:.0f}s") from None
        if code != 0:
            raise BenchError(f"the API server stopped with exit code {code}: {self._tail()}")

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
        self.raw: dict[int, http.client.HTTPConnection] = {}  # server port -> keep-alive

    def _saw(self, response: Any) -> None:
        stream = response.extensions.get("network_stream")
        client_addr = stream.get_extra_info("client_addr") if stream is not None else None
        if client_addr:
            self.ports.setdefault(response.url.port, set()).add(client_addr[1])

    def close(self) -> None:
        self.client.close()
        for conn in self.raw.values():
            conn.close()

    def execute_raw(self, server: ApiServer, sid: str, code: str) -> float:
        """The same execute through the standard library's ``http.client`` (one keep-alive
        connection, the request in one send): the HTTP client's own share of the time."""
        conn = self.raw.get(server.port)
        if conn is None:
            conn = self.raw[server.port] = http.client.HTTPConnection("127.0.0.1", server.port,
                                                                      timeout=120)
        payload = json.dumps({"code": code}).encode()
        t0 = time.perf_counter()
        conn.request("POST", f"/v1/sessions/{sid}/execute", body=payload,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        elapsed = time.perf_counter() - t0
        self.executes += 1
        if response.status != 200:
            raise BenchError(f"execute (http.client) answered {response.status}: {body}")
        check_api(code, body)
        return elapsed

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
