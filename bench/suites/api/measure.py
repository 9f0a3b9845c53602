"""The API suite's run: two servers (cold and pooled) against the library, alternating."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import fastapi
import httpx
import sqlalchemy
import starlette
import uvicorn

from api.server.store import HistoryStore
from bench.harness import machine
from bench.harness.cells import DATAFRAME, MATPLOTLIB, TRIVIAL, check_lib
from bench.harness.engine import agentbox_containers, check_image
from bench.harness.errors import BenchError
from bench.harness.interleave import alternating, interleave, shuffled
from bench.harness.recorder import Clock, Recorder, header
from bench.harness.run import progress_display
from bench.harness.stats import delta_ci
from bench.harness.suite import Suite, pool_turn
from bench.suites.api import EXECUTE_GROUPS, TARGET_MS, Plan
from bench.suites.api.cpu import CpuMeter
from bench.suites.api.render import api_headlines
from bench.suites.api.service import ApiServer, Http, history_rows
from sandbox import AsyncSession, ManagerConfig, SessionManager

Side = Callable[[], Awaitable[float | None]]
CELLS = [("trivial", TRIVIAL, "1+1"), ("dataframe", DATAFRAME, "10,000-row DataFrame"),
         ("figure", MATPLOTLIB, "matplotlib figure")]


async def lib_execute(session: Any, code: str) -> float:
    t0 = time.perf_counter()
    result = await session.execute(code)
    elapsed = time.perf_counter() - t0
    check_lib(code, result)
    return elapsed


async def blocking(fn: Callable[..., float], *args: Any) -> float:
    return fn(*args)  # blocking by design: the server is a process of its own


class Bench(Suite):
    def __init__(self, plan: Plan, progress: Any, tmp: Path) -> None:
        super().__init__(plan, progress)
        self.plan: Plan = plan
        self.tmp = tmp
        self.extra: dict[str, Any] = {"outputs": {}, "pool_misses": {"api": 0, "library": 0},
                                      "cpu": {}}
        self.http = Http(self.extra["outputs"])

    async def blocks(self, sides: dict[str, Side], n: int, description: str) -> None:
        """Blocks of each side in turn; the order of the sides changes every round (seeded
        shuffle of all permutations), so no side always runs first or after the same one."""
        await interleave(sides, n, block=self.plan.block,
                         orders=shuffled(list(sides), len(sides) * 1000 + n),
                         record=self.rec.add, advance=self.task(description, len(sides) * n))

    async def pairs(self, api_side: Callable[[bool], Awaitable[None]],
                    lib_side: Callable[[bool], Awaitable[None]], n: int, description: str) -> None:
        """One unrecorded run of each (warm-up), then *n* pairs, alternating which is first."""
        await api_side(False)
        await lib_side(False)
        sides: dict[str, Side] = {"api": lambda: api_side(True), "lib": lambda: lib_side(True)}
        await interleave(sides, n, block=1, orders=alternating(list(sides)),
                         advance=self.task(description, 2 * n))

    # 1. session create --------------------------------------------------------------------
    def define_create(self) -> None:
        r, g = self.rec, "create"
        r.define("api.create", g, "POST /v1/sessions (cold, pool_size=0)",
                 "to the parsed 201 body; includes the SQLite sessions row")
        r.define("lib.create", g, "AsyncSession().start()", "library cold start")
        r.define("api.delete", g, "DELETE /v1/sessions/{id}", "to the 204")
        r.define("lib.close", g, "await session.close()")
        r.compare(g, "create: API vs library", "api.create", "lib.create")
        r.compare(g, "delete: API vs library close()", "api.delete", "lib.close")

    async def bench_create(self, server: ApiServer) -> None:
        self.define_create()
        r = self.rec

        async def api_side(record: bool) -> None:
            created, body = self.http.create(server)
            deleted = self.http.delete(server, body["id"])
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

        await self.pairs(api_side, lib_side, self.plan.create, "session create (API · library)")

    # 2 + 3. executes -------------------------------------------------------------------------
    def define_execute(self) -> None:
        r = self.rec
        for key, _code, label in CELLS:
            r.define(f"api.json.{key}", key, f"{label}: API, JSON",
                     "POST .../execute to the parsed JSON body")
            r.define(f"api.sse.{key}", key, f"{label}: API, SSE",
                     "POST .../execute, Accept: text/event-stream, to the parsed result event")
            r.define(f"lib.{key}", key, f"{label}: library", "await session.execute(...)")
            r.compare(key, f"{label}: API JSON vs library", f"api.json.{key}", f"lib.{key}")
            r.compare(key, f"{label}: API SSE vs library", f"api.sse.{key}", f"lib.{key}")
        r.define("api.get", "trivial", "GET /v1/sessions/{id} (HTTP floor)",
                 "no kernel: uvicorn + FastAPI + httpx, JSON body")
        r.define("api.raw.trivial", "trivial", "1+1: API, JSON, stdlib http.client",
                 "the JSON execute from http.client instead of httpx")
        r.compare("trivial", "1+1: API JSON (http.client) vs library", "api.raw.trivial",
                  "lib.trivial")

    async def bench_execute(self, server: ApiServer) -> None:
        p, http = self.plan, self.http
        cells = [(key, code, label, getattr(p, key)) for key, code, label in CELLS]
        self.define_execute()
        _, body = http.create(server)
        sid = body["id"]
        try:
            async with AsyncSession() as session:
                for key, code, label, n in cells:
                    sides: dict[str, Side] = {
                        f"api.json.{key}": partial(blocking, http.execute_json, server, sid, code),
                        f"api.sse.{key}": partial(blocking, http.execute_sse, server, sid, code),
                        f"lib.{key}": partial(lib_execute, session, code),
                    }
                    if key == "trivial":
                        sides["api.get"] = lambda: blocking(http.get, server, sid)
                        sides["api.raw.trivial"] = partial(blocking, http.execute_raw, server,
                                                           sid, code)
                    for _ in range(p.warmup):
                        for side in sides.values():
                            await side()
                    # 1+1: also each call's CPU time, the server's and this process's.
                    meter = CpuMeter(server.pid) if key == "trivial" else None
                    if meter is not None:
                        sides = {name: meter.metered(name, side) for name, side in sides.items()}
                    names = "API JSON · API SSE · library" + (
                        " · HTTP floor · http.client" if key == "trivial" else "")
                    await self.blocks(sides, n, f"{label} ({names})")
                    if meter is not None:
                        self.extra["cpu"] = meter.summary()
        finally:
            http.delete(server, sid)

    # 4. the history write alone ----------------------------------------------------------------
    async def bench_history(self) -> None:
        """``HistoryStore.add_execution`` (SQLite WAL, on the loop for small rows) with the result bodies
        the API returned: what every API execute pays before it answers."""
        r, g, last = self.rec, "history", self.http.last_body
        shapes = [("trivial", TRIVIAL, "history write alone: 1+1 result"),
                  ("dataframe", DATAFRAME, "history write alone: DataFrame result"),
                  ("figure", MATPLOTLIB, "history write alone: figure (PNG) result")]
        for key, _code, label in shapes:
            r.define(f"store.{key}", g, label, "HistoryStore.add_execution, separate SQLite file")
        store = HistoryStore(f"sqlite:///{self.tmp / 'history-alone' / 'history.sqlite3'}")

        async def timed_write(code: str) -> float:
            t0 = time.perf_counter()
            await store.add_execution("s-bench", code, last[code], time.time())
            return time.perf_counter() - t0

        try:
            await store.add_session("s-bench", "anonymous", {}, {})
            for _key, code, _label in shapes:  # warm-up
                await store.add_execution("s-bench", code, last[code], time.time())
            sides: dict[str, Side] = {f"store.{key}": partial(timed_write, code)
                                      for key, code, _ in shapes}
            await self.blocks(sides, self.plan.history, "history write alone (SQLite)")
        finally:
            store.close()

    # 5. pool acquire ----------------------------------------------------------------------------
    def define_pool(self) -> None:
        r, g = self.rec, "pool"
        r.define("api.pool.acquire", g, "POST /v1/sessions (pool_size=2, pool full)",
                 "to the parsed 201 body, from_pool true")
        r.define("lib.pool.acquire", g, "await m.create() (pool_size=2, pool full)")
        r.define("api.pool.ttfr", g, "POST /v1/sessions + first 1+1 (JSON)", "time to first result")
        r.define("lib.pool.ttfr", g, "m.create() + first 1+1", "time to first result")
        r.compare(g, "pool acquire: API vs library", "api.pool.acquire", "lib.pool.acquire")
        r.compare(g, "pool acquire + first 1+1: API vs library", "api.pool.ttfr", "lib.pool.ttfr")

    async def bench_pool(self, server: ApiServer) -> None:
        self.define_pool()
        r, http, misses = self.rec, self.http, self.extra["pool_misses"]
        async with SessionManager(ManagerConfig(pool_size=2)) as m:
            async def both_full(timeout: float = 120.0) -> None:
                """Both pools at 2: no refill (a cold start) runs during a take."""
                end = time.monotonic() + timeout
                while m.pool_level < 2 or http.pool_level(server) < 2:
                    if time.monotonic() > end:
                        raise BenchError(f"the pools did not refill to 2 in {timeout:.0f}s")
                    await asyncio.sleep(0.02)

            async def api_side(record: bool) -> None:
                await both_full()
                t0 = time.perf_counter()
                acquired, body = http.create(server)
                try:
                    http.execute_json(server, body["id"], TRIVIAL)
                    ttfr = time.perf_counter() - t0
                finally:
                    http.delete(server, body["id"])
                if not body.get("from_pool"):
                    misses["api"] += 1
                elif record:
                    r.add("api.pool.acquire", acquired)
                    r.add("api.pool.ttfr", ttfr)

            async def lib_side(record: bool) -> None:
                await both_full()
                turn = await pool_turn(m)
                if not turn.from_pool:
                    misses["library"] += 1
                elif record:
                    r.add("lib.pool.acquire", turn.acquired_s)
                    r.add("lib.pool.ttfr", turn.ttfr_s)

            await self.pairs(api_side, lib_side, self.plan.pool,
                             "pool acquire, size 2 (API · library)")


def mark_deltas(rec: Recorder) -> None:
    """The added milliseconds' interval of every comparison; the target for executes."""
    for c in rec.comparisons:
        if "ratio" not in c:
            continue
        c["delta_ci95_ms"] = list(delta_ci(rec.samples(c["subject"]), rec.samples(c["baseline"])))
        if c["group"] in EXECUTE_GROUPS:
            c["target_ms"] = TARGET_MS
            c["target_met"] = c["delta_p50_ms"] < TARGET_MS


async def measure_all(bench: Bench, tmp: Path, checks: dict[str, Any]) -> None:
    server = ApiServer(tmp / "api-cold", pool_size=0)
    try:
        await server.start()
        await bench.bench_create(server)
        await bench.bench_execute(server)
    finally:
        await server.stop()
    checks["history_rows"] = history_rows(server.history_db)
    checks["api_executes"] = bench.http.executes
    await bench.bench_history()
    pooled = ApiServer(tmp / "api-pool", pool_size=2)
    try:
        await pooled.start()
        await bench.bench_pool(pooled)
    finally:
        await pooled.stop()


def libraries() -> dict[str, str]:
    return {"fastapi": fastapi.__version__, "starlette": starlette.__version__,
            "uvicorn": uvicorn.__version__, "httpx": httpx.__version__,
            "sqlalchemy": sqlalchemy.__version__, "sqlite": sqlite3.sqlite_version}


async def run(plan: Plan, console: Any) -> dict[str, Any]:
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="agentbox-bench-api-") as tmpdir, \
            progress_display(console) as progress:
        bench = Bench(plan, progress, Path(tmpdir))
        check_image(bench.docker, bench.image)
        info = machine.machine_info(bench.docker, bench.image)
        checks: dict[str, Any] = {"containers_before": {
            "agentbox_containers": len(agentbox_containers(bench.docker, mine=False)),
            "mine": agentbox_containers(bench.docker, mine=True)}}
        try:
            await measure_all(bench, Path(tmpdir), checks)
        finally:
            bench.http.close()
    bench.rec.finish()
    mark_deltas(bench.rec)
    info["loadavg_at_end"] = machine.loadavg()
    checks.update(pool_misses=bench.extra["pool_misses"],
                  connections_per_server={str(p): len(c) for p, c in bench.http.ports.items()},
                  leaked_containers=agentbox_containers(bench.docker, mine=True))
    data = header("api", plan, clock, git=machine.git_state(("api",)), machine=info)
    data.update({"libraries": libraries(), "outputs": bench.extra["outputs"], "checks": checks,
                 "cpu": bench.extra["cpu"],
                 "series": bench.rec.series, "comparisons": bench.rec.comparisons})
    data["headlines"] = api_headlines(data)
    return data
