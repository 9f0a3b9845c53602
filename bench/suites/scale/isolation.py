"""Isolation: gVisor (runsc) against runc, cold starts, cells and idle memory."""

from __future__ import annotations

import asyncio

from bench.harness.cells import DATAFRAME, TRIVIAL, check_lib
from bench.harness.interleave import alternating, interleave
from bench.suites.scale import MiB
from bench.suites.scale.fleet import Scale
from bench.suites.scale.hostmem import container_host_memory

RUNTIMES = ("runc", "runsc")


def define_isolation(bench: Scale) -> None:
    r, g = bench.rec, "isolation"
    for rt in RUNTIMES:
        r.define(f"iso.{rt}.cold", g, f"{rt}: cold start total", "session.phases['total']")
        r.define(f"iso.{rt}.container_start", g, f"{rt}: container_start")
        r.define(f"iso.{rt}.kernel_ready", g, f"{rt}: kernel_ready")
        r.define(f"iso.{rt}.close", g, f"{rt}: close()")
        r.define(f"iso.{rt}.rt", g, f"{rt}: 1+1 round trip")
        r.define(f"iso.{rt}.df", g, f"{rt}: 10,000-row DataFrame display")
        r.define(f"iso.{rt}.mem", g, f"{rt}: idle container, host memory",
                 "cgroup usage + shim PSS, after one 1+1", unit="MiB")
    for key, label in (("cold", "cold start"), ("container_start", "container_start"),
                       ("kernel_ready", "kernel_ready"), ("close", "close()"),
                       ("rt", "1+1"), ("df", "DataFrame display"), ("mem", "idle memory")):
        r.compare(g, f"{label}: runsc / runc", f"iso.runsc.{key}", f"iso.runc.{key}")


def container_memory_one(bench: Scale, runtime: str, cid: str) -> None:
    cg, shim = container_host_memory(bench.docker, cid)
    bench.rec.add(f"iso.{runtime}.mem", (cg["usage"] + shim) / MiB)


async def cold_pair(bench: Scale, i: int) -> None:
    """A cold start of each runtime (i == 0: a warm-up pair, not recorded)."""
    r = bench.rec
    for rt in (RUNTIMES if i % 2 else RUNTIMES[::-1]):
        session = await bench.new_session(rt)
        try:
            check_lib(TRIVIAL, await session.execute(TRIVIAL))
            cid = session.container_id
            before = len(r.series[f"iso.{rt}.mem"]["samples"])
            await asyncio.to_thread(container_memory_one, bench, rt, cid)
        finally:
            close_s = await bench.close(session)
        if i == 0:
            del r.series[f"iso.{rt}.mem"]["samples"][before:]
            continue
        for phase in ("container_start", "kernel_ready"):
            r.add(f"iso.{rt}.{phase}", session.phases[phase])
        r.add(f"iso.{rt}.cold", session.phases["total"])
        r.add(f"iso.{rt}.close", close_s)


async def cells(bench: Scale) -> None:
    p = bench.plan
    sessions = {rt: await bench.new_session(rt) for rt in RUNTIMES}
    try:
        for code, key, n in ((TRIVIAL, "rt", p.iso_rt), (DATAFRAME, "df", p.iso_df)):
            for rt in RUNTIMES:
                for _ in range(3):
                    await bench.rt(sessions[rt], code)
            sides = {f"iso.{rt}.{key}": (lambda rt=rt, code=code: bench.rt(sessions[rt], code))
                     for rt in RUNTIMES}
            advance = bench.task(f"{'1+1' if key == 'rt' else 'DataFrame'}: runc · runsc", 2 * n)
            await interleave(sides, n, block=p.block, orders=alternating(list(sides)),
                             record=bench.rec.add, advance=advance)
    finally:
        for s in sessions.values():
            await bench.close(s)


async def bench_isolation(bench: Scale) -> None:
    define_isolation(bench)
    if "runsc" not in (bench.docker.info().get("Runtimes") or {}):
        bench.extra["checks"]["runsc"] = "not registered with the engine: run `make engine-gvisor`"
        return
    bench.extra["checks"]["runsc"] = "registered"
    bench.load("isolation: cold starts")
    p = bench.plan
    advance = bench.task("cold start: runc · runsc", p.iso_cold)
    for i in range(0 if p.iso_warmup else 1, p.iso_cold + 1):
        await cold_pair(bench, i)
        if i:
            advance(1)
    bench.load("isolation: cells")
    await cells(bench)
