"""Failure paths: a cell over its time limit (interrupted, or restarted when it ignores
SIGINT), a kernel that exits, a container killed from outside; each against a cell
that ends by itself, a healthy round trip or a cold start, interleaved."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.harness.cells import TRIVIAL, check_lib
from bench.harness.errors import BenchError
from bench.suites.scale.fleet import Scale
from sandbox import SessionState

SLEEP_1 = "import time; time.sleep(1)"
SLEEP_LONG = "import time; time.sleep(60)"
IGNORE_SIGINT = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                 "while True:\n    time.sleep(0.05)")
EXIT = "import os; os._exit(1)"
LIMIT_S = 1.0  # the timeout of the failure-path cells

SERIES = [  # key, group, label, note
    ("fail.natural.overshoot", "timeout", "cell that ends by itself after 1 s: total − 1 s",
     "time.sleep(1), no timeout hit"),
    ("fail.interrupt.overshoot", "timeout", "timeout=1, interrupted: total − 1 s",
     "time.sleep(60); SIGINT at the limit, KeyboardInterrupt, kernel kept"),
    ("fail.restart.overshoot", "timeout", "timeout=1, SIGINT ignored: total − 1 s",
     "SIGINT, interrupt_grace_s, then a fresh kernel in the same container"),
    ("fail.restart.work", "timeout", "… of which the restart (less the 2 s grace)",
     "kill + start of the kernel through agentbox-init, until it answers"),
    ("fail.next.natural", "timeout", "next 1+1 after a cell that ended by itself", ""),
    ("fail.next.interrupt", "timeout", "next 1+1 after the interrupted timeout", ""),
    ("fail.next.restart", "timeout", "next 1+1 after the restart (first cell of a "
     "fresh kernel)", ""),
    ("fail.rt", "death", "1+1 on a healthy session", "interleaved with the deaths"),
    ("fail.died.detect", "death", "os._exit(1) in a cell → result 'died'",
     "call to result; agentbox-init reports the exit"),
    ("fail.died.next", "death", "next 1+1 after the death (kernel restarted in place)", ""),
    ("fail.kill.call", "death", "docker kill (the engine API call)",
     "SIGKILL to PID 1; returns once the engine has seen the exit"),
    ("fail.kill.detect", "death", "docker kill → session.state 'dead'",
     "from the start of the kill call"),
    ("fail.kill.after", "death", "… after the kill call returned", ""),
    ("fail.kill.next", "death", "next 1+1 after the kill (container replaced)", ""),
    ("fail.cold", "death", "cold start (AsyncSession().start())",
     "interleaved with the restarts and deaths"),
]

COMPARISONS = [  # group, figure, subject, baseline
    ("timeout", "timeout → usable (interrupt) / cell ending by itself",
     "fail.interrupt.overshoot", "fail.natural.overshoot"),
    ("timeout", "timeout → usable (restart) / cell ending by itself",
     "fail.restart.overshoot", "fail.natural.overshoot"),
    ("timeout", "kernel restart work / cold start", "fail.restart.work", "fail.cold"),
    ("timeout", "next 1+1 after interrupt / after a normal cell",
     "fail.next.interrupt", "fail.next.natural"),
    ("timeout", "next 1+1 after restart / after a normal cell",
     "fail.next.restart", "fail.next.natural"),
    ("death", "os._exit → 'died' / healthy 1+1", "fail.died.detect", "fail.rt"),
    ("death", "1+1 after a death (restart in place) / cold start", "fail.died.next", "fail.cold"),
    ("death", "docker kill → 'dead' / the kill call itself", "fail.kill.detect", "fail.kill.call"),
    ("death", "1+1 after docker kill (new container) / cold start", "fail.kill.next", "fail.cold"),
]


class Failures:
    """One session taken through every failure path, the baselines interleaved."""

    def __init__(self, bench: Scale, session: Any) -> None:
        self.bench, self.session, self.rec = bench, session, bench.rec
        self.grace: float = session.config.interrupt_grace_s

    async def natural(self) -> None:
        elapsed, result = await self.bench.timed(self.session, SLEEP_1, timeout=30)
        if result.status != "ok":
            raise BenchError(f"time.sleep(1) ended {result.status}: {result.notes}")
        self.rec.add("fail.natural.overshoot", elapsed - LIMIT_S)
        self.rec.add("fail.next.natural", await self.bench.rt(self.session))

    async def timeout(self, code: str, path: str) -> float:
        elapsed, result = await self.bench.timed(self.session, code, timeout=LIMIT_S)
        ended = result.timeout.ended_by if result.timeout else None
        if result.status != "timeout" or ended != path:
            raise BenchError(f"expected a timeout ended by {path}, got {result.status} "
                             f"({ended}): {result.notes}")
        self.rec.add(f"fail.{path}.overshoot", elapsed - LIMIT_S)
        self.rec.add(f"fail.next.{path}", await self.bench.rt(self.session))
        return elapsed

    async def cold(self) -> None:
        self.rec.add("fail.cold", (await self.bench.cold_start()).phases["total"])

    async def interrupts(self, n: int) -> None:
        self.bench.load("failures: timeout → interrupt")
        # The first KeyboardInterrupt of a fresh kernel also loads IPython's traceback
        # machinery: timed once, apart (context), then the recorded ones.
        elapsed, result = await self.bench.timed(self.session, SLEEP_LONG, timeout=LIMIT_S)
        if result.status != "timeout":
            raise BenchError(f"expected a timeout, got {result.status}: {result.notes}")
        self.bench.extra["checks"]["first_interrupt_overshoot_s"] = elapsed - LIMIT_S
        await self.bench.rt(self.session)
        advance = self.bench.task("timeout: interrupt · cell ending by itself", n)
        for i in range(n):
            if i % 2:
                await self.natural()
            await self.timeout(SLEEP_LONG, "interrupt")
            if i % 2 == 0:
                await self.natural()
            advance(1)

    async def restarts(self, n: int) -> None:
        self.bench.load("failures: timeout → restart")
        advance = self.bench.task("timeout: restart (SIGINT ignored) · cold start", n)
        for i in range(n):
            elapsed = await self.timeout(IGNORE_SIGINT, "restart")
            self.rec.add("fail.restart.work", elapsed - LIMIT_S - self.grace)
            await (self.natural() if i % 2 else self.cold())
            await (self.cold() if i % 2 else self.natural())
            advance(1)

    async def deaths(self, n: int) -> None:
        self.bench.load("failures: os._exit")
        advance = self.bench.task("kernel death: os._exit · healthy 1+1 · cold start", n)
        for _ in range(n):
            self.rec.add("fail.rt", await self.bench.rt(self.session))
            elapsed, result = await self.bench.timed(self.session, EXIT, timeout=30)
            if result.status != "died":
                raise BenchError(f"os._exit ended {result.status}, not died: {result.notes}")
            self.rec.add("fail.died.detect", elapsed)
            elapsed, result = await self.bench.timed(self.session)
            check_lib(TRIVIAL, result)
            if not result.kernel_restarted:
                raise BenchError("the cell after a kernel death did not restart the kernel")
            self.rec.add("fail.died.next", elapsed)
            await self.cold()
            advance(1)

    async def kill_once(self) -> None:
        session, r = self.session, self.rec
        r.add("fail.rt", await self.bench.rt(session))
        cid = session.container_id
        t0 = time.perf_counter()
        await asyncio.to_thread(self.bench.docker.api.kill, cid)
        t1 = time.perf_counter()
        while session.state is not SessionState.DEAD:
            if time.perf_counter() - t1 > 15:
                raise BenchError("session.state did not become dead within 15 s of "
                                 f"docker kill (it is {session.state.value})")
            await asyncio.sleep(0.001)
        t2 = time.perf_counter()
        r.add("fail.kill.call", t1 - t0)
        r.add("fail.kill.detect", t2 - t0)
        r.add("fail.kill.after", t2 - t1)
        elapsed, result = await self.bench.timed(session)
        check_lib(TRIVIAL, result)
        if not result.kernel_restarted or session.container_id == cid:
            raise BenchError("the cell after docker kill did not get a new container")
        r.add("fail.kill.next", elapsed)
        await self.cold()

    async def kills(self, n: int) -> None:
        self.bench.load("failures: docker kill")
        advance = self.bench.task("docker kill from outside · cold start", n)
        for _ in range(n):
            await self.kill_once()
            advance(1)


def define_failures(bench: Scale) -> None:
    for key, group, label, note in SERIES:
        bench.rec.define(key, group, label, note)
    for group, figure, subject, baseline in COMPARISONS:
        bench.rec.compare(group, figure, subject, baseline)


async def bench_failures(bench: Scale) -> None:
    p = bench.plan
    define_failures(bench)
    grace = None
    session = await bench.new_session()
    try:
        paths = Failures(bench, session)
        grace = paths.grace
        await bench.rt(session)
        await paths.interrupts(p.interrupt)
        await paths.restarts(p.restart)
        await paths.deaths(p.died)
        await paths.kills(p.killed)
    finally:
        await bench.close(session)
    bench.extra["checks"]["interrupt_grace_s"] = grace
