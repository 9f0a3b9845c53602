"""Scale, failure paths and isolation, each figure beside a baseline of the same run.

1. Throughput: aggregate ``1+1`` cells per second with 1, 4, 16 and 64 sessions each
   running ``1+1`` in a loop for a fixed time (bursts of every level in rotating order,
   round after round). Baseline: the 1-session rate. Beside it the cell latency, the
   CPU this process spends per cell and how busy the machine was.
2. Memory: per idle session (the container's memory cgroup, plus its containerd-shim)
   at 16 idle sessions, per pooled kernel, and a host ipykernel's RSS as the baseline;
   from it, the most idle sessions this machine holds (formula in the report). The
   sessions are not started until memory runs out.
3. Growth: cold start and ``1+1`` round trip with 0, 8, 16 and 32 idle sessions alive,
   visited going up and again coming down (so a drift of the machine's load cancels
   out). Baseline: the value at 0.
4. Failure paths: a cell over its ``timeout=1`` ended by SIGINT, and one ignoring SIGINT
   (kernel restarted), each to a usable kernel again (total - 1 s, then the next
   ``1+1``), against a cell that ends by itself after 1 s; ``os._exit`` in a cell to the
   ``died`` result; ``docker kill`` from outside to ``session.state`` ``dead``; the next
   ``1+1`` after each, against a cold start.
5. Isolation: cold start, ``1+1`` and a DataFrame display under gVisor (``runsc``)
   against ``runc``, interleaved; memory of each idle container.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.suites import Suite

MiB = 1024 * 1024
RESERVE_FRACTION = 0.10  # of the machine's memory, kept for the host, engine and page cache
LATENCY_KEEP = 2000  # per-cell latencies kept per level (a uniform sample), of thousands


@dataclass(frozen=True)
class Plan:
    mode: str
    live_levels: tuple[int, ...]  # idle sessions alive while start and round trip are timed
    live_starts: int  # cold starts per visit of a level
    live_rt: int  # 1+1 round trips per visit
    concurrency: tuple[int, ...]  # sessions running 1+1 in a loop at once
    burst_s: float  # length of one throughput burst
    rounds: int  # bursts per concurrency level
    memory_n: int  # idle sessions whose memory is read (one of live_levels)
    pool: int  # pooled kernels whose memory is read
    host_kernels: int  # host ipykernels whose memory is read (the baseline)
    interrupt: int  # timeout -> interrupt, and cells ending by themselves
    restart: int  # timeout -> restart (SIGINT ignored)
    died: int  # os._exit in a cell
    killed: int  # docker kill from outside
    iso_cold: int  # cold starts per runtime
    iso_rt: int  # 1+1 per runtime
    iso_df: int  # DataFrame displays per runtime
    iso_warmup: bool = True  # one unrecorded cold start of each runtime first
    start_parallel: int = 4  # fleet sessions started at once
    block: int = 10


PLANS = {
    # Quick: every figure, few samples, smaller levels (8 sessions instead of 16-64).
    "quick": Plan("quick", live_levels=(0, 8), live_starts=1, live_rt=10,
                  concurrency=(1, 4, 8), burst_s=1.0, rounds=2, memory_n=8, pool=1,
                  host_kernels=1, interrupt=1, restart=1, died=1, killed=1, iso_cold=1,
                  iso_rt=20, iso_df=4, iso_warmup=False, block=5),
    "full": Plan("full", live_levels=(0, 8, 16, 32), live_starts=3, live_rt=60,
                 concurrency=(1, 4, 16, 64), burst_s=3.0, rounds=3, memory_n=16, pool=4,
                 host_kernels=4, interrupt=5, restart=3, died=5, killed=5, iso_cold=6,
                 iso_rt=150, iso_df=20),
}

SUITE = Suite(
    name="scale", title="agentbox scale benchmark", heading="Scale, failures, isolation",
    report="benchmarks-scale.md", plot="bench-scale.png", plans=PLANS,
    measures="cells per second at 1–64 concurrent sessions, memory per idle session and the "
             "most this machine holds, start and round trip with many live sessions, timeout "
             "recovery and kernel-death detection, gVisor (runsc) against runc")
