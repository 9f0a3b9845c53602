"""Host-side tuning: where the host's time goes in ``await session.execute("1+1")``, and
what the host's own ZMTP reader costs (or saves) against libzmq's recv.

1. A profile. cProfile (on the thread's CPU clock, so waiting in epoll does not count)
   around a loop of ``1+1`` on one warm session. The library has no I/O thread of its
   own: the kernel's sockets are read by ``sandbox._zmtp`` in the calling thread's
   asyncio loop (small messages are parsed there too; only those over
   ``sandbox._parse.INLINE_BYTES`` go to a worker process, and ``1+1`` has none), so the
   profile is the host's whole share of a round trip: CPU time per cell grouped by area,
   and the functions with the most time of their own.

2. Before/after: the kernel transport. *Before* is ``LibzmqConnection`` (``libzmq.py``):
   the transport as it was at commit 164c099 (a ``zmq.asyncio.Context`` with
   ``MAXMSGSIZE``, jupyter_client's channels, shell, IOPub and control, each read by the
   old pump: ``_recv_watched`` then ``deserialize``), as a subclass of the library's
   ``KernelConnection`` that routes into the same ``Route`` objects through ``deliver``.
   One warm session gets it by having ``sandbox._session.KernelConnection`` replaced
   while that session starts. *After* is a warm session as the library makes it. Both
   run in this process, in interleaved blocks of cells, round after round: wall time and
   this process's CPU time per cell (all threads, so libzmq's I/O thread counts for
   *before*), and their ratio after / before.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.suites import Suite


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

SUITE = Suite(
    name="tuning", title="agentbox host-side tuning", heading="Host-side tuning",
    report="benchmarks-tuning.md", plot="bench-tuning.png", plans=PLANS,
    measures="a profile of the host's share of a `1+1` round trip, and the library's message "
             "pump before and after the tuning it led to")
