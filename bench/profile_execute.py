"""Where the host's time goes in one ``await session.execute("1+1")``.

    .venv/bin/python bench/profile_execute.py [--cells 2000] [--out bench/results/profile-execute.txt]

cProfile (the standard library's, nothing to install; on the thread's CPU clock,
so waiting in epoll does not count) around a loop of ``1+1``
on one warm session. Everything the library does for a cell runs in the calling
thread's asyncio loop (ZMQ's own I/O thread is C++ and is not profiled), so the
profile is the host's whole Python share of a round trip. Printed: wall time and
this process's CPU time per cell without the profiler, the CPU time per cell
grouped by area (jupyter_client's message (de)serialisation, ZMQ, asyncio, the
library's own modules...), and the functions that take the most time of their own.

Then an A/B experiment, to put a number on the two avoidable costs the profile
shows (nothing in ``sandbox/`` is changed; the variants exist only in this
process, for the experiment):

- *dates*: jupyter_client parses every message's ``header.date`` and
  ``parent_header.date`` with dateutil (``jsonutil.extract_dates``) although the
  library never reads them; variant: ``jupyter_client.session.extract_dates``
  swapped for the identity.
- *pump*: ``KernelConnection._pump`` reads through jupyter_client's
  ``get_*_msg()``, which awaits ``socket.poll()`` and then ``recv_multipart()``:
  two pyzmq futures per message; variant: a pump that awaits
  ``recv_multipart()`` alone and deserialises the same way.

Two warm sessions (one with each pump) and the dates switch give four variants,
timed in interleaved blocks, round after round: wall and CPU time per cell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import REPO, TRIVIAL, check_lib

# (area, substrings of the code's file path or name), first match wins.
AREAS = [
    ("dateutil / date parsing (jupyter_client.jsonutil)", ("dateutil", "jsonutil", "_strptime")),
    ("jupyter_client session: (de)serialise, sign, msg", ("jupyter_client/session",)),
    ("jupyter_client other", ("jupyter_client",)),
    ("json", ("/json/", "_json")),
    ("hmac / hashlib", ("hmac", "hashlib", "_hashlib")),
    ("uuid / secrets", ("uuid", "secrets", "random")),
    ("zmq (pyzmq, asyncio sockets)", ("zmq",)),
    ("asyncio (loop, tasks, queues, timeouts)", ("asyncio", "selectors", "select.epoll")),
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
    from sandbox import AsyncSession

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


def report(plain: dict[str, float], stats: pstats.Stats, cells: int, top: int) -> str:
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    areas: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        key = area_of(filename, func)
        areas[key] = areas.get(key, 0.0) + tt
    out = io.StringIO()
    w = out.write
    w(f"cells: {cells} x `1+1` on one warm session\n")
    w(f"without the profiler: wall {plain['wall_per_cell'] * 1e3:.2f} ms/cell, this process's CPU "
      f"{plain['cpu_per_cell'] * 1e3:.2f} ms/cell "
      f"({plain['cpu_per_cell'] / plain['wall_per_cell']:.0%} of the wall time)\n")
    w(f"under cProfile (main thread's CPU clock): {total / cells * 1e6:.0f} µs/cell "
      "(the profiler inflates call-heavy code: read the shares)\n\n")
    w("own time per cell, by area:\n")
    for key, tt in sorted(areas.items(), key=lambda kv: -kv[1]):
        w(f"  {tt / cells * 1e6:8.1f} µs  {tt / total:6.1%}  {key}\n")
    w(f"\ntop {top} functions by own time (µs per cell, calls per cell):\n")
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in rows:
        short = filename.replace(str(REPO) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        w(f"  {tt / cells * 1e6:8.1f}  (cum {ct / cells * 1e6:8.1f})  {nc / cells:6.1f}x  "
          f"{short}:{line}({func})\n")
    w("\ncumulative, the library's and jupyter_client's entry points (µs per cell):\n")
    for (filename, line, func), (_cc, nc, _tt, ct, _callers) in sorted(
            raw.items(), key=lambda kv: -kv[1][3]):
        if ("sandbox/" in filename or "jupyter_client/session" in filename
                or "jsonutil" in filename) and ct / cells > 20e-6:
            short = filename.replace(str(REPO) + "/", "").split("site-packages/")[-1]
            w(f"  {ct / cells * 1e6:8.1f}  {nc / cells:6.1f}x  {short}:{line}({func})\n")
    return out.getvalue()


async def direct_pump(self: Any, channel: str) -> None:
    """The experiment's pump: ``recv_multipart`` alone per message (no ``poll`` first);
    otherwise what ``KernelConnection._pump`` does."""
    import zmq

    sock = {"iopub": self.client.iopub_channel, "shell": self.client.shell_channel,
            "control": self.client.control_channel}[channel].socket
    session = self.client.session
    while True:
        try:
            frames = await sock.recv_multipart()
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError:
            return
        try:
            _, smsg = session.feed_identities(frames)
            msg = session.deserialize(smsg)
        except Exception:
            self.rejected += 1
            continue
        parent = msg.get("parent_header") if isinstance(msg, dict) else None
        parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
        queue = self._routes.get(parent_id) if isinstance(parent_id, str) else None
        if queue is None:
            self.unrouted += 1
            continue
        queue.put_nowait((channel, msg))


@contextlib.contextmanager
def dates_skipped(skip: bool) -> Any:
    import jupyter_client.session as jsession

    original = jsession.extract_dates
    if skip:
        jsession.extract_dates = lambda obj: obj
    try:
        yield
    finally:
        jsession.extract_dates = original


async def ab(rounds: int, block: int) -> dict[str, dict[str, float]]:
    """Wall and CPU (this process) per cell for pump x dates, interleaved blocks."""
    from sandbox import AsyncSession
    from sandbox._kernel import KernelConnection

    original_pump = KernelConnection._pump
    baseline = AsyncSession()
    variant = AsyncSession()
    try:
        await baseline.start()
        KernelConnection._pump = direct_pump  # type: ignore[method-assign]
        try:
            await variant.start()  # its pumps are created now, with the variant
        finally:
            KernelConnection._pump = original_pump  # type: ignore[method-assign]
        sessions = {"jupyter_client get_msg": baseline, "recv_multipart only": variant}
        samples: dict[str, dict[str, list[float]]] = {}
        conditions = list(itertools.product(sessions, (False, True)))
        for session in sessions.values():
            for _ in range(50):
                check_lib(TRIVIAL, await session.execute(TRIVIAL))
        for rnd in range(rounds):
            order = conditions[rnd % 4:] + conditions[:rnd % 4]
            for pump, skip in (order if rnd % 2 == 0 else order[::-1]):
                name = f"pump: {pump}; dates: {'skipped' if skip else 'parsed'}"
                with dates_skipped(skip):
                    session = sessions[pump]
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    for _ in range(block):
                        check_lib(TRIVIAL, await session.execute(TRIVIAL))
                    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                s = samples.setdefault(name, {"wall": [], "cpu": []})
                s["wall"].append(wall / block)
                s["cpu"].append(cpu / block)
    finally:
        await baseline.close()
        await variant.close()
    return {name: {"wall_ms": statistics.median(s["wall"]) * 1e3,
                   "cpu_ms": statistics.median(s["cpu"]) * 1e3, "blocks": len(s["wall"])}
            for name, s in samples.items()}


def ab_report(result: dict[str, dict[str, float]], block: int) -> str:
    base = result["pump: jupyter_client get_msg; dates: parsed"]
    lines = [f"A/B (median over blocks of {block} cells; CPU is this process's, all threads):",
             f"  {'variant':<52} {'wall ms':>8} {'CPU ms':>8} {'CPU saved':>10}"]
    for name, r in result.items():
        saved = base["cpu_ms"] - r["cpu_ms"]
        lines.append(f"  {name:<52} {r['wall_ms']:8.3f} {r['cpu_ms']:8.3f} "
                     f"{saved:+8.3f} ms ({saved / base['cpu_ms']:+.0%})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--ab-rounds", type=int, default=8, help="0: no A/B experiment")
    parser.add_argument("--ab-block", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profile-execute.txt")
    args = parser.parse_args(argv)
    plain, stats = asyncio.run(measure(args.cells))
    text = report(plain, stats, args.cells, args.top)
    print(text)
    if args.ab_rounds:
        extra = ab_report(asyncio.run(ab(args.ab_rounds, args.ab_block)), args.ab_block)
        print(extra)
        text += "\n" + extra
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
