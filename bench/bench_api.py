"""Benchmark of the HTTP API: what it adds per call, beside the library call in the same run.

    .venv/bin/python bench/bench_api.py [--quick] [--out bench/results/api.json]

The real service (``api.main.server_for``, uvicorn with its own event loop in a
thread of this process) is driven by one keep-alive ``httpx.Client``; the library
runs in the main thread's asyncio loop. Both sides alternate in blocks, because
these machines are noisy: the figures that matter are the **added milliseconds**
and ratios against the library call measured next to it; absolute times are context.

What is measured (p50/p95/p99, min/max and stdev; raw samples kept):

1. Session create: ``POST /v1/sessions`` (cold: ``pool_size=0``) against
   ``AsyncSession().start()``; ``DELETE /v1/sessions/{id}`` against ``close()``.
2. ``1+1`` through ``POST /v1/sessions/{id}/execute``, as JSON and as server-sent
   events (``Accept: text/event-stream``), against ``await session.execute("1+1")``;
   ``GET /v1/sessions/{id}`` as the HTTP floor (no kernel involved).
3. The same for a 10,000-row DataFrame display and for a matplotlib figure (one
   inline PNG of about 27 kB, 36 kB as base64 in the JSON).
4. The SQLite history write alone (``HistoryStore.add_execution``): every API execute
   writes one row before it answers.
5. Pool acquire with ``pool_size=2``: ``POST /v1/sessions`` against
   ``SessionManager(ManagerConfig(pool_size=2)).create()``, both pools full before
   each take.

Writes JSON (machine, command, every sample) to ``--out`` and a Markdown report to
``--report`` (docs/benchmarks-api.md); ``--render-only FILE`` rebuilds the report only.
Statistics, formatting and machine details come from ``bench_core``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import itertools
import json
import logging
import os
import random
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    DATAFRAME,
    MATPLOTLIB,
    REPO,
    TRIVIAL,
    BenchError,
    Recorder,
    _load,
    agentbox_containers,
    check_image,
    check_lib,
    cli,
    fmt_ms,
    fmt_ratio,
    fmt_spread,
    git_state,
    machine_info,
    percentile,
    progress_display,
    save_figure,
    write_markdown,
)

DEFAULT_OUT = REPO / "bench" / "results" / "api.json"
DEFAULT_REPORT = REPO / "docs" / "benchmarks-api.md"
PLOT_NAME = "bench-api.png"
SCHEMA = 1
TARGET_MS = 2.0  # from the issue: the API adds under 2 ms at p50 per execute
EXECUTE_GROUPS = ("trivial", "dataframe", "figure")
CODE_OF = {"trivial": TRIVIAL, "dataframe": DATAFRAME, "figure": MATPLOTLIB}


@dataclass(frozen=True)
class Plan:
    mode: str
    create: int  # cold create + delete, each side
    pool: int  # pool takes, each side
    trivial: int  # 1+1 executes, each side (JSON, SSE, library, HTTP floor)
    dataframe: int  # DataFrame executes, each side
    figure: int  # matplotlib figure executes, each side
    history: int  # lone history writes, per result shape
    warmup: int = 5
    block: int = 10  # sides alternate in blocks of this many calls


PLANS = {
    "quick": Plan("quick", create=8, pool=8, trivial=200, dataframe=30, figure=15, history=100,
                  block=5),
    "full": Plan("full", create=30, pool=30, trivial=500, dataframe=120, figure=40, history=300,
                 block=10),
}


def delta_ci(subject: Sequence[float], baseline: Sequence[float], *, rounds: int = 2000,
             seed: int = 12345) -> tuple[float, float]:
    """95% bootstrap interval of median(subject) - median(baseline), in milliseconds."""
    rng = random.Random(seed)
    deltas = [statistics.median(rng.choices(subject, k=len(subject)))
              - statistics.median(rng.choices(baseline, k=len(baseline))) for _ in range(rounds)]
    return percentile(deltas, 2.5) * 1000.0, percentile(deltas, 97.5) * 1000.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_api(code: str, body: dict[str, Any]) -> None:
    if body.get("status") != "ok":
        raise BenchError(f"{code!r} through the API ended {body.get('status')}: {body.get('notes')}")
    if code == MATPLOTLIB:
        if not any("image/png" in o.get("data", {}) for o in body.get("outputs", [])
                   if o.get("type") == "display_data"):
            raise BenchError("the matplotlib cell through the API displayed no PNG")
        return
    results = [o for o in body.get("outputs", []) if o.get("type") == "execute_result"]
    if not results:
        raise BenchError(f"{code!r} through the API displayed nothing")
    if code == TRIVIAL and results[0]["data"].get("text/plain") != "2":
        raise BenchError(f"1+1 through the API gave {results[0]['data'].get('text/plain')!r}")


# -- the service, in a thread ---------------------------------------------------------------
class ApiServer:
    """``server_for(Settings(...))`` run by uvicorn in a daemon thread with its own loop."""

    def __init__(self, data_dir: Path, pool_size: int) -> None:
        from api.main import server_for
        from api.settings import Settings

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


# -- the benchmark ----------------------------------------------------------------------------
class Bench:
    def __init__(self, plan: Plan, progress: Any, tmp: Path) -> None:
        import docker
        import httpx

        import sandbox

        self.plan = plan
        self.progress = progress
        self.tmp = tmp
        self.rec = Recorder()
        self.docker = docker.from_env()
        self.image = sandbox.image_tag()
        self.ports: dict[int, set[int]] = {}  # server port -> client ports seen (keep-alive check)
        self.http = httpx.Client(timeout=120.0, event_hooks={"response": [self._saw_response]})
        self.api_executes = 0
        self.extra: dict[str, Any] = {"outputs": {}, "pool_misses": {"api": 0, "library": 0}}
        self.last_body: dict[str, dict[str, Any]] = {}

    def _saw_response(self, response: Any) -> None:
        stream = response.extensions.get("network_stream")
        client_addr = stream.get_extra_info("client_addr") if stream is not None else None
        if client_addr:
            self.ports.setdefault(response.url.port, set()).add(client_addr[1])

    def _task(self, description: str, total: int) -> Any:
        return self.progress.add_task(description, total=total)

    # -- API calls (blocking; the server answers from its own thread) -------------------------
    def api_create(self, server: ApiServer) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        r = self.http.post(f"{server.base}/v1/sessions", json={})
        body = r.json()
        elapsed = time.perf_counter() - t0
        if r.status_code != 201:
            raise BenchError(f"POST /v1/sessions answered {r.status_code}: {r.text[:300]}")
        return elapsed, body

    def api_delete(self, server: ApiServer, sid: str) -> float:
        t0 = time.perf_counter()
        r = self.http.delete(f"{server.base}/v1/sessions/{sid}")
        elapsed = time.perf_counter() - t0
        if r.status_code != 204:
            raise BenchError(f"DELETE /v1/sessions/{sid} answered {r.status_code}: {r.text[:300]}")
        return elapsed

    def api_json(self, server: ApiServer, sid: str, code: str) -> float:
        """Request to parsed JSON result."""
        t0 = time.perf_counter()
        r = self.http.post(f"{server.base}/v1/sessions/{sid}/execute", json={"code": code})
        body = r.json()
        elapsed = time.perf_counter() - t0
        self.api_executes += 1
        if r.status_code != 200:
            raise BenchError(f"execute answered {r.status_code}: {r.text[:300]}")
        check_api(code, body)
        self.last_body[code] = body
        self.extra["outputs"].setdefault(code, {})["json_bytes"] = len(r.content)
        return elapsed

    def api_sse(self, server: ApiServer, sid: str, code: str) -> float:
        """Request to the parsed data of ``event: result``; the rest of the stream (its end)
        is read after the clock stops, so that the connection is kept for the next call."""
        url = f"{server.base}/v1/sessions/{sid}/execute"
        events: list[str] = []
        body: dict[str, Any] | None = None
        t0 = time.perf_counter()
        with self.http.stream("POST", url, json={"code": code},
                              headers={"Accept": "text/event-stream"}) as r:
            if r.status_code != 200:
                r.read()
                raise BenchError(f"execute (SSE) answered {r.status_code}: {r.text[:300]}")
            lines = r.iter_lines()
            event = ""
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
            self.api_executes += 1
            sse_bytes = r.num_bytes_downloaded
        if body is None or event != "result":
            raise BenchError(f"the event stream ended without a result (events {events}, {body})")
        check_api(code, body)
        self.extra["outputs"].setdefault(code, {}).update(
            sse_bytes=sse_bytes, sse_output_events=events.count("output"))
        return elapsed

    def api_get(self, server: ApiServer, sid: str) -> float:
        t0 = time.perf_counter()
        r = self.http.get(f"{server.base}/v1/sessions/{sid}")
        r.json()
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise BenchError(f"GET /v1/sessions/{sid} answered {r.status_code}")
        return elapsed

    def api_pool_level(self, server: ApiServer) -> int:
        r = self.http.get(f"{server.base}/healthz")
        if r.status_code != 200:
            raise BenchError(f"/healthz answered {r.status_code}: {r.text[:300]}")
        return int(r.json()["pool"])

    @staticmethod
    async def lib_execute(session: Any, code: str) -> float:
        t0 = time.perf_counter()
        result = await session.execute(code)
        elapsed = time.perf_counter() - t0
        check_lib(code, result)
        return elapsed

    # -- blocks -------------------------------------------------------------------------------
    async def interleave(self, sides: dict[str, Callable[[], Awaitable[float]]], n: int,
                         task: Any) -> None:
        """Blocks of each side in turn; the order of the sides changes every round (seeded
        shuffle of all permutations), so no side always runs first or after the same one."""
        orders = list(itertools.permutations(sides))
        random.Random(len(sides) * 1000 + n).shuffle(orders)
        block = min(self.plan.block, n)
        done = 0
        for rnd in itertools.count():
            if done >= n:
                break
            k = min(block, n - done)
            for name in orders[rnd % len(orders)]:
                for _ in range(k):
                    self.rec.add(name, await sides[name]())
                    self.progress.advance(task)
            done += k

    # 1. session create --------------------------------------------------------------------
    async def bench_create(self, server: ApiServer) -> None:
        from sandbox import AsyncSession

        r, g = self.rec, "create"
        r.define("api.create", g, "POST /v1/sessions (cold, pool_size=0)",
                 "to the parsed 201 body; includes the SQLite sessions row")
        r.define("lib.create", g, "AsyncSession().start()", "library cold start")
        r.define("api.delete", g, "DELETE /v1/sessions/{id}", "to the 204")
        r.define("lib.close", g, "await session.close()")
        r.compare(g, "create: API vs library", "api.create", "lib.create")
        r.compare(g, "delete: API vs library close()", "api.delete", "lib.close")

        async def api_side(record: bool) -> None:
            created, body = self.api_create(server)
            deleted = self.api_delete(server, body["id"])
            if record:
                r.add("api.create", created)
                r.add("api.delete", deleted)

        async def lib_side(record: bool) -> None:
            session = AsyncSession()
            t0 = time.perf_counter()
            try:
                await session.start()
                started = time.perf_counter() - t0
            finally:
                t1 = time.perf_counter()
                await session.close()
                closed = time.perf_counter() - t1
            if record:
                r.add("lib.create", started)
                r.add("lib.close", closed)

        await api_side(False)  # warm-up: imports, first requests, page cache
        await lib_side(False)
        task = self._task("session create (API · library)", self.plan.create)
        for i in range(self.plan.create):
            for side in ((api_side, lib_side) if i % 2 == 0 else (lib_side, api_side)):
                await side(True)
            self.progress.advance(task)

    # 2 + 3. executes -------------------------------------------------------------------------
    async def bench_execute(self, server: ApiServer) -> None:
        from sandbox import AsyncSession

        r = self.rec
        cells = [("trivial", TRIVIAL, "1+1", self.plan.trivial),
                 ("dataframe", DATAFRAME, "10,000-row DataFrame", self.plan.dataframe),
                 ("figure", MATPLOTLIB, "matplotlib figure", self.plan.figure)]
        for key, _code, label, _n in cells:
            r.define(f"api.json.{key}", key, f"{label}: API, JSON",
                     "POST .../execute to the parsed JSON body")
            r.define(f"api.sse.{key}", key, f"{label}: API, SSE",
                     "POST .../execute, Accept: text/event-stream, to the parsed result event")
            r.define(f"lib.{key}", key, f"{label}: library", 'await session.execute(...)')
            r.compare(key, f"{label}: API JSON vs library", f"api.json.{key}", f"lib.{key}")
            r.compare(key, f"{label}: API SSE vs library", f"api.sse.{key}", f"lib.{key}")
        r.define("api.get", "trivial", "GET /v1/sessions/{id} (HTTP floor)",
                 "no kernel: uvicorn + FastAPI + httpx, JSON body")

        _, body = self.api_create(server)
        sid = body["id"]
        try:
            async with AsyncSession() as session:
                for key, code, label, n in cells:
                    sides: dict[str, Callable[[], Awaitable[float]]] = {
                        f"api.json.{key}": lambda c=code: self._async(self.api_json, server, sid, c),
                        f"api.sse.{key}": lambda c=code: self._async(self.api_sse, server, sid, c),
                        f"lib.{key}": lambda c=code: self.lib_execute(session, c),
                    }
                    if key == "trivial":
                        sides["api.get"] = lambda: self._async(self.api_get, server, sid)
                    for _ in range(self.plan.warmup):
                        for side in sides.values():
                            await side()
                    names = "API JSON · API SSE · library" + (" · HTTP floor" if key == "trivial" else "")
                    task = self._task(f"{label} ({names})", len(sides) * n)
                    await self.interleave(sides, n, task)
        finally:
            self.api_delete(server, sid)

    @staticmethod
    async def _async(fn: Callable[..., float], *args: Any) -> float:
        return fn(*args)  # blocking by design: the server has its own thread and loop

    # 4. the history write alone ----------------------------------------------------------------
    async def bench_history(self) -> None:
        """``HistoryStore.add_execution`` (SQLite WAL, worker thread) with the result bodies
        the API returned: what every API execute pays before it answers."""
        from api.store import HistoryStore

        r, g = self.rec, "history"
        shapes = [("trivial", TRIVIAL, "history write alone: 1+1 result"),
                  ("dataframe", DATAFRAME, "history write alone: DataFrame result"),
                  ("figure", MATPLOTLIB, "history write alone: figure (PNG) result")]
        for key, _code, label in shapes:
            r.define(f"store.{key}", g, label, "HistoryStore.add_execution, separate SQLite file")
        store = HistoryStore(f"sqlite:///{self.tmp / 'history-alone' / 'history.sqlite3'}")
        try:
            await store.add_session("s-bench", "anonymous", {}, {})
            for _key, code, _label in shapes:  # warm-up
                await store.add_execution("s-bench", code, self.last_body[code], time.time())
            sides: dict[str, Callable[[], Awaitable[float]]] = {
                f"store.{key}": (lambda c=code: self._timed_write(store, c))
                for key, code, _ in shapes}
            task = self._task("history write alone (SQLite)", len(sides) * self.plan.history)
            await self.interleave(sides, self.plan.history, task)
        finally:
            store.close()

    async def _timed_write(self, store: Any, code: str) -> float:
        t0 = time.perf_counter()
        await store.add_execution("s-bench", code, self.last_body[code], time.time())
        return time.perf_counter() - t0

    # 5. pool acquire ----------------------------------------------------------------------------
    async def bench_pool(self, server: ApiServer) -> None:
        from sandbox import ManagerConfig, SessionManager

        r, g = self.rec, "pool"
        r.define("api.pool.acquire", g, "POST /v1/sessions (pool_size=2, pool full)",
                 "to the parsed 201 body, from_pool true")
        r.define("lib.pool.acquire", g, "await m.create() (pool_size=2, pool full)")
        r.define("api.pool.ttfr", g, "POST /v1/sessions + first 1+1 (JSON)", "time to first result")
        r.define("lib.pool.ttfr", g, "m.create() + first 1+1", "time to first result")
        r.compare(g, "pool acquire: API vs library", "api.pool.acquire", "lib.pool.acquire")
        r.compare(g, "pool acquire + first 1+1: API vs library", "api.pool.ttfr", "lib.pool.ttfr")

        async with SessionManager(ManagerConfig(pool_size=2)) as m:
            async def both_full(timeout: float = 120.0) -> None:
                """Both pools at 2: no refill (a cold start) runs during a take."""
                end = time.monotonic() + timeout
                while m.pool_level < 2 or self.api_pool_level(server) < 2:
                    if time.monotonic() > end:
                        raise BenchError(f"the pools did not refill to 2 in {timeout:.0f}s")
                    await asyncio.sleep(0.02)

            async def api_side(record: bool) -> None:
                await both_full()
                t0 = time.perf_counter()
                acquired, body = self.api_create(server)
                try:
                    self.api_json(server, body["id"], TRIVIAL)
                    ttfr = time.perf_counter() - t0
                finally:
                    self.api_delete(server, body["id"])
                if not body.get("from_pool"):
                    self.extra["pool_misses"]["api"] += 1
                elif record:
                    r.add("api.pool.acquire", acquired)
                    r.add("api.pool.ttfr", ttfr)

            async def lib_side(record: bool) -> None:
                await both_full()
                t0 = time.perf_counter()
                s = await m.create()
                acquired = time.perf_counter() - t0
                try:
                    result = await s.execute(TRIVIAL)
                    ttfr = time.perf_counter() - t0
                    check_lib(TRIVIAL, result)
                finally:
                    await m.close(s.id)
                if not s.from_pool:
                    self.extra["pool_misses"]["library"] += 1
                elif record:
                    r.add("lib.pool.acquire", acquired)
                    r.add("lib.pool.ttfr", ttfr)

            await api_side(False)
            await lib_side(False)
            task = self._task("pool acquire, size 2 (API · library)", self.plan.pool)
            for i in range(self.plan.pool):
                for side in ((api_side, lib_side) if i % 2 == 0 else (lib_side, api_side)):
                    await side(True)
                self.progress.advance(task)

    # -- containers -------------------------------------------------------------------------------
    def containers(self, mine: bool) -> list[str]:
        return agentbox_containers(self.docker, mine=mine)


def git_info() -> dict[str, Any]:
    """bench_core's git state (commit, changes to sandbox/ and kernel_image/), plus api/."""
    git = git_state()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "api"],
                           capture_output=True, text=True, timeout=10, check=False).stdout
    git["modified"] += [line[3:] for line in dirty.splitlines()]
    return git


def history_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])


def production_logging() -> None:
    """As ``agentbox serve`` does: INFO, one JSON line per request and per execution (here
    to an in-memory sink, so the formatting is paid and the terminal stays quiet)."""
    from api.main import JsonLines

    handler = logging.StreamHandler(_Sink())
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("agentbox.api")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False


class _Sink(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


# -- the run ------------------------------------------------------------------------------------
async def run(plan: Plan, console: Any) -> dict[str, Any]:
    production_logging()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentbox-bench-api-") as tmpdir, \
            progress_display(console) as progress:
        tmp = Path(tmpdir)
        bench = Bench(plan, progress, tmp)
        check_image(bench.docker, bench.image)
        machine = machine_info(bench.docker, bench.image)
        before = {"agentbox_containers": len(bench.containers(mine=False)),
                  "mine": bench.containers(mine=True)}
        checks: dict[str, Any] = {"containers_before": before}
        try:
            server = ApiServer(tmp / "api-cold", pool_size=0)
            try:
                await server.start()
                await bench.bench_create(server)
                await bench.bench_execute(server)
            finally:
                await server.stop()
            checks["history_rows"] = history_rows(server.history_db)
            checks["api_executes"] = bench.api_executes
            await bench.bench_history()
            pooled = ApiServer(tmp / "api-pool", pool_size=2)
            try:
                await pooled.start()
                await bench.bench_pool(pooled)
            finally:
                await pooled.stop()
        finally:
            bench.http.close()
    bench.rec.finish()
    for c in bench.rec.comparisons:
        if "ratio" not in c:
            continue
        subj = bench.rec.series[c["subject"]]["samples"]
        base = bench.rec.series[c["baseline"]]["samples"]
        c["delta_ci95_ms"] = list(delta_ci(subj, base))
        if c["group"] in EXECUTE_GROUPS:
            c["target_ms"] = TARGET_MS
            c["target_met"] = c["delta_p50_ms"] < TARGET_MS
    machine["loadavg_at_end"] = list(os.getloadavg())
    checks.update(pool_misses=bench.extra["pool_misses"],
                  connections_per_server={str(p): len(c) for p, c in bench.ports.items()},
                  leaked_containers=bench.containers(mine=True))
    import fastapi
    import httpx
    import sqlalchemy
    import starlette
    import uvicorn

    data: dict[str, Any] = {
        "schema": SCHEMA,
        "benchmark": "api",
        "mode": plan.mode,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "duration_s": round(time.perf_counter() - started, 1),
        "plan": plan.__dict__,
        "git": git_info(),
        "machine": machine,
        "libraries": {"fastapi": fastapi.__version__, "starlette": starlette.__version__,
                      "uvicorn": uvicorn.__version__, "httpx": httpx.__version__,
                      "sqlalchemy": sqlalchemy.__version__, "sqlite": sqlite3.sqlite_version},
        "outputs": bench.extra["outputs"],
        "checks": checks,
        "series": bench.rec.series,
        "comparisons": bench.rec.comparisons,
    }
    data["headlines"] = api_headlines(data)
    return data


def api_headlines(data: dict[str, Any]) -> list[str]:
    """One-line findings, for the index on the front page (docs/benchmarks.md)."""
    out = []
    for c in data["comparisons"]:
        if c["subject"] in ("api.json.trivial", "api.sse.trivial") and "target_met" in c:
            out.append(f"`1+1` {c['figure'].split(': ')[1].split(' vs')[0]} adds "
                       f"{c['delta_p50_ms']:+.2f} ms at p50 (target < {TARGET_MS:g} ms: "
                       f"{'met' if c['target_met'] else 'not met'})")
    targets = [c for c in data["comparisons"] if "target_met" in c]
    if targets:
        out.append(f"target met for {sum(c['target_met'] for c in targets)} of {len(targets)} "
                   "executes")
    return out


# -- reporting ------------------------------------------------------------------------------------
def fmt_added(c: dict[str, Any]) -> str:
    lo, hi = c["delta_ci95_ms"]
    return f"**{c['delta_p50_ms']:+.2f} ms** [{lo:+.2f} – {hi:+.2f}]"


GROUPS = [
    ("trivial", "1. Trivial cell (`1+1`) per execute",
     "One API session (`POST /v1/sessions/{id}/execute`, JSON body `{\"code\": \"1+1\"}`) and one "
     "library `AsyncSession` in the main thread's loop (`await session.execute(\"1+1\")`), "
     "alternating in blocks. JSON: request to the parsed response body. SSE: same request with "
     "`Accept: text/event-stream`, to the parsed data of the `event: result` line. "
     "`GET /v1/sessions/{id}` is the HTTP floor: the whole HTTP stack, no kernel."),
    ("dataframe", "2. 10,000-row DataFrame display per execute",
     "`import pandas as pd, numpy as np; df = pd.DataFrame(np.random.rand(10000, 5)); df`, "
     "the same three ways, after warm-up runs (pandas imported on both kernels)."),
    ("figure", "2b. matplotlib figure per execute",
     "A 600×400 line plot shown inline (`plt.show()`): one `display_data` with a ~27 kB PNG "
     "(base64 in the JSON), the same three ways, after warm-up runs."),
    ("history", "3. The history write alone",
     "Every API execute writes its result as a row to SQLite (WAL, `synchronous=NORMAL`, in a "
     "worker thread) *before* it answers; that write is part of the added time above. Here it "
     "is timed alone: `HistoryStore.add_execution` with the result bodies the API returned, "
     "on a separate database file, in the main loop."),
    ("create", "4. Session create and delete",
     "`POST /v1/sessions` on a server with `pool_size=0` (a cold start, plus the SQLite "
     "`sessions` row) against `AsyncSession().start()`, then `DELETE /v1/sessions/{id}` against "
     "`await session.close()`; the sides alternate which goes first."),
    ("pool", "5. Pool acquire (`pool_size=2`)",
     "A second server with `pool_size=2`, against `SessionManager(ManagerConfig(pool_size=2))`. "
     "Before each take both pools are back at 2 (`GET /healthz` → `pool`, `m.pool_level`), so "
     "no refill runs during a take; then the take is timed, a `1+1` run, the session closed."),
]


def render_markdown(data: dict[str, Any], plot: str | None) -> str:
    m, series, checks = data["machine"], data["series"], data["checks"]
    lines = [
        "# Benchmarks: HTTP API",
        "",
        "<!-- Generated by bench/bench_api.py; edit the script, not this file. -->",
        "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s). What "
        "the HTTP service adds on top of the library call: the real service (`server_for`, "
        "uvicorn with its own event loop in a thread of the benchmark process) driven by one "
        "keep-alive `httpx.Client`, beside the library (`sandbox.AsyncSession`) in the main "
        "thread's asyncio loop, measured in the same run and alternating in blocks. These "
        "machines are noisy: **read the added milliseconds and the ratios**; the absolute "
        "times are context. The core library's own figures are in "
        "[benchmarks.md](benchmarks.md).",
        "",
        "Reproduce from the repository root:",
        "",
        "```sh",
        ".venv/bin/python bench/bench_api.py" + (" --quick" if data["mode"] == "quick" else ""),
        "```",
        "",
        f"This run: `{data['command']}`; raw samples in `{data.get('out', 'bench/results/api.json')}`.",
        "",
        "Columns: percentiles are linear-interpolated over the *n* samples; spread is min – max "
        "and the standard deviation; ratio is subject p50 / baseline p50 with a 95% bootstrap "
        "interval; **added** is subject p50 − baseline p50 with a 95% bootstrap interval "
        "of that difference.",
        "",
        "## Target",
        "",
        f"From the issue: the API adds under {TARGET_MS:g} ms at p50 per execute.",
        "",
        "| Execute | API p50 | library p50 | added at p50 [95% CI] | target met |",
        "|---|--:|--:|--:|---|",
    ]
    for c in data["comparisons"]:
        if "target_ms" not in c:
            continue
        verdict = "**yes**" if c["target_met"] else "**no**"
        if c["target_met"] and c["delta_ci95_ms"][1] >= c["target_ms"]:
            verdict += " (the interval reaches the target)"
        lines.append(f"| {c['figure']} | {fmt_ms(series[c['subject']]['stats']['p50'])} | "
                     f"{fmt_ms(series[c['baseline']]['stats']['p50'])} | {fmt_added(c)} | "
                     f"{verdict} |")
    lines.append("")
    json_c = next((c for c in data["comparisons"] if c["subject"] == "api.json.trivial"
                   and "delta_p50_ms" in c), None)
    floor = series.get("api.get", {}).get("stats")
    write = series.get("store.trivial", {}).get("stats")
    if json_c and floor and write:
        added, f_ms, w_ms = json_c["delta_p50_ms"], floor["p50"] * 1000, write["p50"] * 1000
        lines += [f"For scale (p50s of separate measurements, so approximate): of the "
                  f"{added:.2f} ms added to a `1+1` (JSON), an HTTP round trip with no kernel "
                  f"(`GET /v1/sessions/{{id}}`) takes {f_ms:.2f} ms and the SQLite history write "
                  f"alone {w_ms:.2f} ms; the rest, ~{added - f_ms - w_ms:.2f} ms, is the other work "
                  "of the execute path (validation, the result to JSON and back, log lines, "
                  "hops to the database thread) and any difference between the two sessions' "
                  "containers.", ""]
    for group, title, text in GROUPS:
        keys = [k for k, s in series.items() if s["group"] == group and s.get("stats")]
        if not keys:
            continue
        lines += [f"## {title}", "", text, "",
                  "| Figure | n | p50 | p95 | p99 | spread | baseline | baseline p50 | ratio | added |",
                  "|---|--:|--:|--:|--:|---|---|--:|--:|--:|"]
        baselines = {c["baseline"] for c in data["comparisons"]}
        for key in keys:
            s, st = series[key], series[key]["stats"]
            head = (f"{s['label']} | {st['n']} | {fmt_ms(st['p50'])} | {fmt_ms(st['p95'])} | "
                    f"{fmt_ms(st['p99'])} | {fmt_spread(st)}")
            comps = [c for c in data["comparisons"] if c["subject"] == key and "ratio" in c]
            if not comps:
                role = "*(a baseline)*" if key in baselines else "*(context)*"
                lines.append(f"| {head} | {role} | – | – | – |")
            for c in comps:
                b = series[c["baseline"]]
                lo, hi = c["ratio_ci95"]
                lines.append(f"| {head} | {b['label']} | {fmt_ms(b['stats']['p50'])} | "
                             f"{fmt_ratio(c['ratio'])} [{fmt_ratio(lo)}–{fmt_ratio(hi)}] | "
                             f"{fmt_added(c)} |")
        lines.append("")
        lines += _notes(data, group)
        lines.append("")
    if plot:
        lines += [f"![added milliseconds at p50, with 95% intervals]({plot})", ""]
    git = data.get("git") or {}
    mod = git.get("modified") or []
    lib = data["libraries"]
    lines += [
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| platform | {m['platform']} |",
        f"| CPU | {m['cpu_model']}, {m['cpu_count']} logical CPUs "
        f"({m.get('cpu_affinity')} usable by this process) |",
        f"| memory | {m['memory_total_mib']} MiB total |",
        f"| load average (1/5/15 min) | start {_load(m.get('loadavg_at_start'))}, "
        f"end {_load(m.get('loadavg_at_end'))} |",
        f"| Docker | {m['docker_version']} (API {m['docker_api_version']}), storage "
        f"{m['docker_storage_driver']}, cgroup v{m['docker_cgroup_version']} |",
        f"| kernel image | `{m['image']}` ({m['image_size_mb']} MB) |",
        f"| host Python | {m['python']}; " + ", ".join(f"{k} {v}" for k, v in lib.items()) + " |",
    ]
    if git.get("commit"):
        lines.append(f"| code | commit `{git['commit'][:12]}`"
                     + (f", with uncommitted changes in {', '.join(f'`{p}`' for p in mod)}"
                        if mod else "") + " |")
    leaks = checks.get("leaked_containers", [])
    lines += ["", f"Containers of this run left behind: {len(leaks)}"
              + (f" ({', '.join(leaks)})" if leaks else "") + " (checked by the "
              "`org.agentbox.owner-pid` label; other processes' containers are not counted).", ""]
    return "\n".join(lines)


def _notes(data: dict[str, Any], group: str) -> list[str]:
    checks, outs = data["checks"], data.get("outputs", {})
    notes: list[str] = []
    if group in EXECUTE_GROUPS:
        code = CODE_OF[group]
        o = outs.get(code, {})
        if o:
            notes.append(f"- Bytes received per execute: JSON {o.get('json_bytes', 0):,}, SSE "
                         f"{o.get('sse_bytes', 0):,} ({o.get('sse_output_events', 0)} `output` "
                         "event(s) as published, then the `result` event, which repeats the "
                         "outputs).")
    if group == "trivial":
        conns = checks.get("connections_per_server", {})
        notes += [
            "- What the API adds to each execute: the HTTP request and response (uvicorn, "
            "FastAPI routing, the body-limit and access-log middlewares, pydantic validation), "
            "the result serialised to JSON, **a history row written to SQLite before the "
            "response** (table 3), and two structured log lines at INFO, formatted as "
            "`agentbox serve` does (written to a null sink here).",
            "- Client and server share one process (and one GIL); the server's loop is in its "
            "own thread, the library's in the main thread. The API session and the library "
            "session are two containers with the same defaults.",
            f"- TCP connections the client opened per server: "
            f"{', '.join(str(n) for n in conns.values()) or '–'} (keep-alive: 1 expected).",
            f"- History rows written by the first server: {checks.get('history_rows', '–')}, "
            f"for {checks.get('api_executes', '–')} API executes (warm-ups included).",
        ]
    if group == "history":
        comps = {c["subject"]: c for c in data["comparisons"] if "delta_p50_ms" in c}
        for key, label in (("trivial", "1+1"), ("dataframe", "DataFrame"), ("figure", "figure")):
            st = data["series"].get(f"store.{key}", {}).get("stats")
            c = comps.get(f"api.json.{key}")
            if st and c:
                notes.append(f"- {label}: the write alone takes {fmt_ms(st['p50'])} at p50, of "
                             f"the {c['delta_p50_ms']:.2f} ms the API adds (JSON).")
    if group == "create":
        notes.append("- A cold start is about half a second with tens of milliseconds of spread, "
                     "so the few milliseconds the API adds to it (an HTTP round trip and the "
                     "SQLite `sessions` row) are within its noise: see the interval.")
    if group == "pool":
        misses = checks.get("pool_misses", {})
        notes.append(f"- Takes that found the pool empty and started cold (excluded): API "
                     f"{misses.get('api', 0)}, library {misses.get('library', 0)}.")
        notes.append("- The library's acquire is a pop from a list (microseconds); the API's is "
                     "that plus an HTTP round trip and the SQLite `sessions` row: read the added "
                     "milliseconds, not the ratio.")
    return notes


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """Added ms at p50 (with 95% intervals): per execute, and per session operation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    comps = [c for c in data["comparisons"] if "delta_ci95_ms" in c]
    panels = [("per execute", [c for c in comps if c["group"] in EXECUTE_GROUPS]),
              ("per session operation", [c for c in comps if c["group"] not in EXECUTE_GROUPS])]
    panels = [(t, cs) for t, cs in panels if cs]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(9, 1.2 + 0.45 * len(comps) + 0.6 * len(panels)))
    for ax, (title, cs) in zip(axes[:, 0], panels, strict=True):
        ys = list(range(len(cs)))
        mid = [c["delta_p50_ms"] for c in cs]
        err = [[m - c["delta_ci95_ms"][0] for m, c in zip(mid, cs, strict=True)],
               [c["delta_ci95_ms"][1] - m for m, c in zip(mid, cs, strict=True)]]
        ax.barh(ys, mid, xerr=err, height=0.5, capsize=3)
        ax.set_yticks(ys, [c["figure"] for c in cs], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        if title == "per execute":
            ax.axvline(TARGET_MS, color="red", linestyle="--", linewidth=1,
                       label=f"target: < {TARGET_MS:g} ms")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("added milliseconds at p50 (API − library)")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"agentbox API overhead, {data['mode']} mode, {data['date'][:10]}")
    return save_figure(fig, path)


def write_report(data: dict[str, Any], report: Path, console: Any) -> None:
    write_markdown(data, report, console, render=render_markdown, plot=make_plot,
                   plot_name=PLOT_NAME)


def print_summary(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"agentbox API benchmark ({data['mode']}, {data['duration_s']:.0f} s)")
    for col in ("figure", "API p50", "library p50", "ratio", "added p50 [95% CI]", "target"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for c in data["comparisons"]:
        if "ratio" not in c:
            continue
        lo, hi = c["delta_ci95_ms"]
        target = ("" if "target_ms" not in c else
                  "[green]met[/green]" if c["target_met"] else "[red]not met[/red]")
        table.add_row(c["figure"], fmt_ms(data["series"][c["subject"]]["stats"]["p50"]),
                      fmt_ms(data["series"][c["baseline"]]["stats"]["p50"]), fmt_ratio(c["ratio"]),
                      f"{c['delta_p50_ms']:+.2f} ms [{lo:+.2f}, {hi:+.2f}]", target)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)


# -- main -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    return cli(argv, title="agentbox API benchmark", doc=__doc__, plans=PLANS, run_plan=run,
               report=write_report, summary=print_summary, default_out=DEFAULT_OUT,
               default_report=DEFAULT_REPORT)


if __name__ == "__main__":
    sys.exit(main())
