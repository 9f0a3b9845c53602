"""The tuning suite's profile: cProfile around ``1+1`` cells, CPU per cell by area and
the functions with the most time of their own (paths shown repository-relative,
``<stdlib>/...`` or by package)."""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from typing import Any

from bench.harness import machine
from bench.harness.cells import TRIVIAL, check_lib
from sandbox import AsyncSession

# (area, substrings of the code's file path or name), first match wins.
AREAS = [
    ("dateutil / date parsing (jupyter_client.jsonutil)", ("dateutil", "jsonutil", "_strptime")),
    ("jupyter_client session: (de)serialise, sign, msg", ("jupyter_client/session",)),
    ("jupyter_client other", ("jupyter_client",)),
    ("json", ("/json/", "_json")),
    ("hmac / hashlib", ("hmac", "hashlib", "_hashlib")),
    ("uuid / secrets", ("uuid", "secrets", "random")),
    ("sandbox._zmtp (the ZMTP reader)", ("sandbox/_zmtp",)),
    ("sandbox._parse", ("sandbox/_parse",)),
    ("zmq (pyzmq, asyncio sockets)", ("zmq",)),
    ("asyncio (loop, tasks, queues, timeouts)", ("asyncio", "selectors", "select.epoll")),
    ("socket", ("socket",)),
    ("sandbox._outputs", ("sandbox/_outputs",)),
    ("sandbox._session", ("sandbox/_session",)),
    ("sandbox._kernel", ("sandbox/_kernel",)),
    ("sandbox._models", ("sandbox/_models",)),
    ("traitlets", ("traitlets",)),
    ("datetime", ("datetime",)),
]


def area_of(filename: str, func: str) -> str:
    where = f"{filename}:{func}"
    for area, needles in AREAS:
        if any(n in where for n in needles):
            return area
    return "other (builtins, copy, typing...)"


async def measure(cells: int) -> tuple[dict[str, float], pstats.Stats]:
    async with AsyncSession() as session:
        for _ in range(50):
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(cells):
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
        plain = {"wall_per_cell": (time.perf_counter() - wall0) / cells,
                 "cpu_per_cell": (time.process_time() - cpu0) / cells}
        # The main thread's CPU clock: time spent waiting in epoll is not counted, so the
        # profile is where the CPU goes, not where the wall time is spent waiting.
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for _ in range(cells):
            await session.execute(TRIVIAL)
        profiler.disable()
    return plain, pstats.Stats(profiler)


def _where(filename: str, line: int, func: str) -> str:
    return f"{machine.display_path(filename)}:{line}({func})"


def _areas(raw: dict[Any, Any], cells: int, total: float) -> list[str]:
    areas: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        key = area_of(filename, func)
        areas[key] = areas.get(key, 0.0) + tt
    return [f"  {tt / cells * 1e6:8.1f} µs  {tt / total:6.1%}  {key}\n"
            for key, tt in sorted(areas.items(), key=lambda kv: -kv[1])]


def report(plain: dict[str, float], stats: pstats.Stats, cells: int, top: int) -> str:
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    out = io.StringIO()
    w = out.write
    w(f"cells: {cells} x `1+1` on one warm session\n")
    w(f"without the profiler: wall {plain['wall_per_cell'] * 1e3:.2f} ms/cell, this process's CPU "
      f"{plain['cpu_per_cell'] * 1e3:.2f} ms/cell "
      f"({plain['cpu_per_cell'] / plain['wall_per_cell']:.0%} of the wall time)\n")
    w(f"under cProfile (main thread's CPU clock): {total / cells * 1e6:.0f} µs/cell "
      "(the profiler inflates call-heavy code: read the shares)\n\n")
    w("own time per cell, by area:\n")
    w("".join(_areas(raw, cells, total)))
    w(f"\ntop {top} functions by own time (µs per cell, calls per cell):\n")
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in sorted(
            raw.items(), key=lambda kv: -kv[1][2])[:top]:
        w(f"  {tt / cells * 1e6:8.1f}  (cum {ct / cells * 1e6:8.1f})  {nc / cells:6.1f}x  "
          f"{_where(filename, line, func)}\n")
    w("\ncumulative, the library's and jupyter_client's entry points (µs per cell):\n")
    for (filename, line, func), (_cc, nc, _tt, ct, _callers) in sorted(
            raw.items(), key=lambda kv: -kv[1][3]):
        if ("sandbox/" in filename or "jupyter_client/session" in filename
                or "jsonutil" in filename) and ct / cells > 20e-6:
            w(f"  {ct / cells * 1e6:8.1f}  {nc / cells:6.1f}x  {_where(filename, line, func)}\n")
    return out.getvalue()
