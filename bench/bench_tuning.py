"""Host-side tuning: where the host's time goes in ``await session.execute("1+1")``, and
what the host's own ZMTP reader costs (or saves) against libzmq's recv.

    .venv/bin/python bench/bench_tuning.py [--quick] [--out bench/results/tuning.json]

1. A profile. cProfile (on the thread's CPU clock, so waiting in epoll does not count)
   around a loop of ``1+1`` on one warm session. The library has no I/O thread of its
   own any more: the kernel's sockets are read by ``sandbox._zmtp`` in the calling
   thread's asyncio loop (small messages are parsed there too; only those over
   ``sandbox._parse.INLINE_BYTES`` go to a worker process, and ``1+1`` has none), so
   the profile is the host's whole share of a round trip: CPU time per cell grouped by
   area, and the functions with the most time of their own.

2. Before/after: the kernel transport. The host used to read the kernel's sockets with
   libzmq (pyzmq's ``zmq.asyncio``, through jupyter_client's ``AsyncKernelClient``
   channels), whose only receive cap is ``ZMQ_MAXMSGSIZE`` per frame; it now speaks
   ZMTP itself (``sandbox._zmtp``: frames and bytes capped per message before anything
   is kept, a byte budget with back-pressure, the peer checked on every connect) and
   routes into byte-bounded ``Route`` queues.

   *Before* is :class:`LibzmqConnection`: the transport as it was at commit 164c099
   (a ``zmq.asyncio.Context`` with ``MAXMSGSIZE``, jupyter_client's channels, shell,
   IOPub and control, each read by the old pump: ``_recv_watched`` then
   ``deserialize``), as a subclass of the library's ``KernelConnection`` that routes
   into the same ``Route`` objects through ``deliver``. One warm session gets it by
   having ``sandbox._session.KernelConnection`` replaced while that session starts.
   *After* is a warm session as the library makes it. Both run in this process, in
   interleaved blocks of cells, round after round: wall time and this process's CPU
   time per cell (all threads, so libzmq's I/O thread counts for *before*), and their
   ratio after / before.

Writes JSON (``--out``) and ``docs/benchmarks-tuning.md`` (``--report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import os
import pstats
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

from sandbox._exceptions import DeadlineExceeded, SandboxError
from sandbox._kernel import KernelConnection, KernelEndpoint, Route, deserialize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    REPO,
    TRIVIAL,
    BenchError,
    agentbox_containers,
    check_lib,
    cli,
    git_state,
    ratio_ci,
    save_figure,
)

DEFAULT_OUT = REPO / "bench" / "results" / "tuning.json"
DEFAULT_REPORT = REPO / "docs" / "benchmarks-tuning.md"
PLOT_NAME = "bench-tuning.png"


@dataclass(frozen=True)
class Plan:
    mode: str
    cells: int  # profiled cells (and as many timed without the profiler)
    rounds: int  # before/after rounds
    block: int  # cells per side per round
    top: int = 25


PLANS = {
    "quick": Plan("quick", cells=200, rounds=4, block=25),
    "full": Plan("full", cells=600, rounds=8, block=100),
}

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


RECV_WATCH_S = 0.5  # as at 164c099


async def _recv_watched(sock: Any) -> list[bytes]:
    """*Before*, verbatim from 164c099: ``sock.recv_multipart()``, re-armed whenever
    ZMQ holds a message the future was not woken for (ZMQ's file descriptor is
    edge-triggered, and a send on the same DEALER socket can consume the edge of a
    reply that has just arrived)."""
    fut = sock.recv_multipart()
    try:
        while True:
            done, _ = await asyncio.wait({fut}, timeout=RECV_WATCH_S)
            if done:
                result: list[bytes] = fut.result()
                return result
            if sock.closed or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                continue
            if not fut.cancel():  # it completed meanwhile: keep its message
                result = fut.result()
                return result
            fut = sock.recv_multipart()
    finally:
        if not fut.done():
            fut.cancel()


class LibzmqConnection(KernelConnection):
    """*Before*: the host's kernel transport as it was at 164c099, libzmq through pyzmq
    and jupyter_client's ``AsyncKernelClient`` channels (shell, IOPub and control),
    read by the old pump (``_recv_watched``, then ``deserialize``).

    What is the library's here is only what both sides share: the handshake
    (``wait_iopub``), the routing (``deliver``, into the same ``Route`` objects) and
    ``deserialize`` (run with its header cap off, as 164c099's had none: the same
    signature check and JSON parsing). Only the transport differs."""

    def __init__(self, endpoint: KernelEndpoint, *, max_message_bytes: int,
                 container_id: str | None = None) -> None:
        super().__init__(endpoint, max_message_bytes=max_message_bytes,
                         container_id=container_id)
        self.context = zmq.asyncio.Context()
        # ZMQ drops (unread) any frame larger than this: libzmq's only receive cap.
        self.context.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.client = AsyncKernelClient(context=self.context)
        self.client.load_connection_info(endpoint.host_info)

    async def connect(self, run_dir: Path, deadline: float, alive: Any = None) -> None:
        self._run_dir = run_dir
        paths = self.endpoint.socket_paths(run_dir)
        next_check = time.monotonic() + 0.5
        while not all(p.exists() for p in paths):
            now = time.monotonic()
            if now >= deadline:
                raise DeadlineExceeded("the kernel did not bind its sockets before the deadline")
            if alive is not None and now >= next_check:
                next_check = now + 0.5
                if not await alive():
                    raise SandboxError("the kernel exited while starting")
            await asyncio.sleep(0.005)
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        for channel in ("iopub", "shell", "control"):
            self._pumps[channel] = asyncio.create_task(self._pump(channel))
        await self.wait_iopub(deadline)

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.client.session.msg(msg_type, content)
        self.client.shell_channel.send(msg)
        msg_id: str = msg["header"]["msg_id"]
        return msg_id

    def execute(self, code: str) -> tuple[str, Route]:
        msg = self.client.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
        })
        msg_id: str = msg["header"]["msg_id"]
        queue = self.route(msg_id)
        self.client.shell_channel.send(msg)
        return msg_id, queue

    async def reconnect_iopub(self, timeout: float = 5.0) -> None:
        task = self._pumps.pop("iopub", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        old = self.client._iopub_channel  # jupyter_client creates the channel lazily
        self.client._iopub_channel = None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        self.client.iopub_channel.start()
        self._pumps["iopub"] = asyncio.create_task(self._pump("iopub"))
        await self.wait_iopub(time.monotonic() + timeout)

    async def _pump(self, channel: str) -> None:
        sock = {"iopub": self.client.iopub_channel, "shell": self.client.shell_channel,
                "control": self.client.control_channel}[channel].socket
        session = self.client.session
        while True:
            try:
                msg = deserialize(session, await _recv_watched(sock),
                                  max_header_bytes=sys.maxsize)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK) or self.context.closed:
                    return  # the socket or the context is closed
                self.rejected += 1
                await asyncio.sleep(0.01)
                continue
            except Exception:  # bad signature, bad JSON, bad shape
                self.rejected += 1
                continue
            self.deliver(channel, msg)

    async def close(self) -> None:
        self._closing = True
        for task in self._pumps.values():
            task.cancel()
        for task in self._pumps.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pumps = {}
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        self.context.destroy(linger=0)


@contextlib.contextmanager
def transport(cls: type[KernelConnection]) -> Iterator[None]:
    """Sessions started meanwhile talk to their kernel through *cls* (the session
    module builds its ``KernelConnection`` by that name, in ``_connect``)."""
    import sandbox._session as session_module

    saved = session_module.KernelConnection
    session_module.KernelConnection = cls  # type: ignore[misc]
    try:
        yield
    finally:
        session_module.KernelConnection = saved  # type: ignore[misc]


async def before_after(plan: Plan) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """Wall and CPU (this process, all threads) per cell, per block, for both transports;
    and the connection class each session really used."""
    from sandbox import AsyncSession

    before, after = AsyncSession(), AsyncSession()
    try:
        with transport(LibzmqConnection):
            await before.start()  # its kernel connection is made now, through libzmq
        await after.start()
        sessions = {"before": before, "after": after}
        used = {name: type(s._kernel).__name__ for name, s in sessions.items()}
        if used != {"before": "LibzmqConnection", "after": "KernelConnection"}:
            raise BenchError(f"the sessions did not get the transports compared: {used}")
        for session in sessions.values():
            for _ in range(50):
                check_lib(TRIVIAL, await session.execute(TRIVIAL))
        samples: dict[str, dict[str, list[float]]] = {
            name: {"wall": [], "cpu": []} for name in sessions}
        for rnd in range(plan.rounds):
            for name in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
                session = sessions[name]
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for _ in range(plan.block):
                    check_lib(TRIVIAL, await session.execute(TRIVIAL))
                samples[name]["wall"].append((time.perf_counter() - wall0) / plan.block)
                samples[name]["cpu"].append((time.process_time() - cpu0) / plan.block)
    finally:
        await before.close()
        await after.close()
    return samples, used


async def run(plan: Plan, console: Any) -> dict[str, Any]:
    from sandbox._runtime.engine import connect

    client = connect()
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    load0 = list(os.getloadavg())
    try:
        console.print(f"profiling {plan.cells} cells of `1+1`...")
        plain, stats = await measure(plan.cells)
        profile = report(plain, stats, plan.cells, plan.top)
        console.print(f"before/after: {plan.rounds} rounds of {plan.block} cells each side...")
        samples, transports = await before_after(plan)
        leaks = agentbox_containers(client, mine=True)
    finally:
        client.close()
    comparisons = {}
    for kind in ("wall", "cpu"):
        b, a = samples["before"][kind], samples["after"][kind]
        comparisons[kind] = {"before_ms": statistics.median(b) * 1e3,
                             "after_ms": statistics.median(a) * 1e3,
                             "ratio": statistics.median(a) / statistics.median(b),
                             "ratio_ci95": list(ratio_ci(a, b))}
    cpu = comparisons["cpu"]
    wall = comparisons["wall"]
    headlines = [f"host CPU per `1+1` {cpu['before_ms']:.2f} → {cpu['after_ms']:.2f} ms "
                 f"({cpu['ratio']:.2f}× before) with the capped ZMTP reader in place of "
                 "libzmq's recv",
                 f"round trip per `1+1` {wall['before_ms']:.2f} → {wall['after_ms']:.2f} ms "
                 f"({wall['ratio']:.2f}× before)"]
    return {
        "benchmark": "tuning", "mode": plan.mode, "plan": plan.__dict__,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": time.monotonic() - t0,
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"loadavg_at_start": load0, "loadavg_at_end": list(os.getloadavg()),
                    "cpu_count": os.cpu_count()},
        "git": git_state(), "plain": plain, "profile": profile, "samples": samples,
        "comparisons": comparisons, "headlines": headlines,
        "checks": {"leaked_containers": leaks, "transports": transports},
    }


def make_plot(data: dict[str, Any], path: Path) -> bool:
    """Each round's host CPU and wall time per cell, before and after."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (kind, label) in zip(axes, (("cpu", "host CPU per cell (ms)"),
                                        ("wall", "round trip per cell (ms)")), strict=True):
        for x, side in enumerate(("before", "after")):
            values = [v * 1e3 for v in data["samples"][side][kind]]
            ax.scatter([x] * len(values), values, alpha=0.6, label=side)
            ax.hlines(statistics.median(values), x - 0.25, x + 0.25, color="black")
        ax.set_xticks([0, 1], ["before\n(libzmq recv)", "after\n(capped ZMTP reader)"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(label)
    fig.suptitle(f"`1+1` per round of {data['plan']['block']} cells, {data['mode']} mode, "
                 f"{data['date'][:10]} (bar: median)", fontsize=9)
    return save_figure(fig, path)


def write_report(data: dict[str, Any], path: Path, console: Any) -> None:
    c, plan = data["comparisons"], data["plan"]
    lines = [
        "# Host-side tuning: before and after",
        "",
        "<!-- Generated by bench/bench_tuning.py; edit the script, not this file. -->",
        "",
        f"Measured {data['date']} in **{data['mode']}** mode ({data['duration_s']:.0f} s), "
        f"load average {data['machine']['loadavg_at_start'][0]:.1f} → "
        f"{data['machine']['loadavg_at_end'][0]:.1f}. Reproduce from the repository root:",
        "",
        "```sh",
        ".venv/bin/python bench/bench_tuning.py",
        "```",
        "",
        "The host used to read its kernels' sockets with libzmq (pyzmq's `zmq.asyncio`, "
        "through jupyter_client's `AsyncKernelClient` channels). libzmq's only receive "
        "cap is `ZMQ_MAXMSGSIZE`, per frame: a multipart message is buffered whole before "
        "the host sees its first frame, and its high-water mark counts messages, not bytes "
        "or frames, so a box could make the host hold hundreds of MB or build millions of "
        "objects with one message. The host now speaks ZMTP itself (`sandbox._zmtp`): "
        "every frame header is checked before its body is read (frames and bytes per "
        "message capped, header frames capped), complete messages wait within a byte "
        "budget (back-pressure to the kernel), the peer is checked on every connect, and "
        "messages are routed into byte-bounded queues; a message over "
        "`sandbox._parse.INLINE_BYTES` is parsed in a worker process (never the case "
        "for `1+1`). This page measures what that costs a small cell.",
        "",
        f"*Before* is a warm session whose kernel connection is the transport as it was at "
        f"commit 164c099 (`LibzmqConnection` in the script: a `zmq.asyncio.Context` with "
        f"`MAXMSGSIZE`, jupyter_client's shell, IOPub and control channels, each read with "
        f"`recv_multipart()` and parsed with the same `deserialize`, routed into the same "
        f"queues); *after* is a session as the library makes it. Same process, same "
        f"kernel image, {plan['rounds']} interleaved rounds of {plan['block']} cells per "
        f"side; medians over the rounds, ratio after / before with a 95% bootstrap "
        f"interval. Host CPU is this process's, all threads: libzmq's I/O thread counts "
        f"for *before*.",
        "",
        "| per `1+1` cell | before | after | after / before [95% CI] |",
        "|---|--:|--:|--:|",
    ]
    for kind, label in (("cpu", "host CPU (this process, all threads)"),
                        ("wall", "wall time (round trip)")):
        k = c[kind]
        lo, hi = k["ratio_ci95"]
        lines.append(f"| {label} | {k['before_ms']:.3f} ms | {k['after_ms']:.3f} ms | "
                     f"**{k['ratio']:.2f}×** [{lo:.2f}×–{hi:.2f}×] |")
    lines += [
        "",
        "- The wall time is dominated by the kernel (its own ZMQ sockets and Python); "
        "a difference in host CPU shows there only when the host is the bottleneck (many "
        "sessions in one process: see the throughput figures in "
        "[benchmarks-scale.md](benchmarks-scale.md)).",
        "- The reader is pure Python on the event loop where libzmq parsed frames in C++ "
        "on its own I/O thread: the caps are paid for in the loop's time, which the "
        "profile below shows under `sandbox._zmtp`. In exchange the host has no ZMQ "
        "context, hence no I/O threads, per session.",
        "",
        *([f"![host CPU and round trip per cell, before and after]({PLOT_NAME})", ""]
          if make_plot(data, path.parent / PLOT_NAME) else []),
        "## Profile of the library as it is now",
        "",
        "```text",
        data["profile"].rstrip(),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
    console.print(f"report: {path}")


def print_summary(data: dict[str, Any]) -> None:
    for line in data["headlines"]:
        print(line)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, title="agentbox host-side tuning", doc=__doc__, plans=PLANS, run_plan=run,
               report=write_report, summary=print_summary, default_out=DEFAULT_OUT,
               default_report=DEFAULT_REPORT)


if __name__ == "__main__":
    sys.exit(main())
