"""The history row written on the loop (api/server/history_inline.py): the same row the
worker thread writes, never a wait on the loop for a busy database, and a WAL that
starts over instead of growing with every row."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from api.server.history_inline import CHECKPOINT_EVERY, INLINE_MAX, small
from api.server.store import HistoryStore


def result(i: int, text: str = "") -> dict[str, Any]:
    return {"status": "ok", "execution_count": i, "duration_ms": 1.5 + i,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": text or f"{i}\n"}],
            "stdout": text or f"{i}\n", "stderr": "", "error": None, "truncated": False,
            "notes": []}


async def test_the_loop_writes_the_row_the_worker_thread_writes(tmp_path: Path) -> None:
    """Small rows, a row past the per-row cap, one too big for the loop, and rows after
    the key's history is full: the same rows, notes and usage either way."""
    stores = {}
    for name in ("loop", "thread"):
        store = HistoryStore(f"sqlite:///{tmp_path / name}.sqlite3",
                             max_execution_bytes=20_000, max_key_bytes=120_000)
        if name == "thread":
            store.inline = None
        else:
            assert store.inline is not None
        await store.add_session("s-1", "k-1", {}, {})
        stores[name] = store
    cells = [("a = 1", result(1)), ("print('x' * 30000)", result(2, "x" * 30_000)),
             ("big", result(3, "y" * (INLINE_MAX + 10))),
             *[(f"c{i}", result(i, "z" * 9000)) for i in range(4, 20)]]
    said: dict[str, list[list[str]]] = {"loop": [], "thread": []}
    for code, body in cells:
        for name, store in stores.items():
            notes: list[str] = []
            started = 1_700_000_000.0 + len(said[name])
            seq = await store.add_execution("s-1", code, json.loads(json.dumps(body)),
                                            started, notes)
            assert seq == len(said[name]) + 1
            said[name].append(notes)
    assert said["loop"] == said["thread"]
    notes = [n for cell in said["loop"] for n in cell]
    assert any("capped" in n for n in notes)  # the per-row cap cut one
    assert any("is full" in n for n in notes)  # and the key filled up
    rows = {name: [{k: v for k, v in r.items() if k != "id"} for r in await s.history("s-1")]
            for name, s in stores.items()}
    assert rows["loop"] == rows["thread"] and len(rows["loop"]) == len(cells)
    assert stores["loop"].key_usage("k-1") == stores["thread"].key_usage("k-1") <= 120_000
    for store in stores.values():
        store.close()


async def test_a_busy_database_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    """Another writer holds the database for a second: the row is written once it lets
    go (nothing dropped), and the loop kept running all the while."""
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(f"sqlite:///{path}")
    await store.add_session("s-1", "k-1", {}, {})
    await store.add_execution("s-1", "first", result(1), time.time())  # counts the key
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # = another process in the middle of a write
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, other.rollback)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    t0 = time.monotonic()
    seq = await store.add_execution("s-1", "second", result(2), time.time())
    waited = time.monotonic() - t0
    ticker.cancel()
    assert seq == 2 and waited >= 0.9, waited
    assert max(gaps) < 0.3, f"the loop stood still for {max(gaps):.3f}s"
    assert [r["code"] for r in await store.history("s-1")] == ["first", "second"]
    other.close()
    store.close()


async def test_the_wal_starts_over_instead_of_growing(tmp_path: Path) -> None:
    """Rows written on the loop leave checkpoints to a worker thread; the WAL is reused
    after each one, so its file stops growing (without that it grows by every row)."""
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(f"sqlite:///{path}")
    await store.add_session("s-1", "k-1", {}, {})
    wal = Path(f"{path}-wal")
    sizes = []
    for rnd in range(5):
        for i in range(CHECKPOINT_EVERY):
            await store.add_execution("s-1", f"c{rnd}.{i}", result(i, "w" * 2000), time.time())
            await asyncio.sleep(0)
        sizes.append(wal.stat().st_size)
    assert sizes[-1] <= 1.5 * sizes[1], sizes
    assert len(await store.history("s-1")) == 5 * CHECKPOINT_EVERY
    store.close()


async def test_without_a_connection_of_its_own_the_thread_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop cannot open its connection (a locked or unreadable file): every row
    is still written, by the worker thread."""
    def refuse() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    store = HistoryStore(f"sqlite:///{tmp_path / 'h.sqlite3'}")
    await store.add_session("s-1", "k-1", {}, {})
    assert store.inline is not None
    monkeypatch.setattr(store.inline, "_connection", refuse)
    for i in range(1, 4):
        assert await store.add_execution("s-1", f"c{i}", result(i), time.time()) == i
    assert [r["code"] for r in await store.history("s-1")] == ["c1", "c2", "c3"]
    store.close()


def test_small_never_passes_a_row_over_its_limit() -> None:
    rng = random.Random(7)

    def value(depth: int) -> Any:
        kind = rng.randrange(6 if depth < 4 else 3)
        if kind == 0:
            return "é" * rng.randrange(0, 400)
        if kind == 1:
            return rng.choice([None, True, 1, -2.5e300, 10**30])
        if kind == 2:
            return "\n\"\\" * rng.randrange(0, 50)
        if kind == 3:
            return [value(depth + 1) for _ in range(rng.randrange(0, 8))]
        return {f"k{j}": value(depth + 1) for j in range(rng.randrange(0, 8))}

    passed = 0
    for _ in range(3000):
        code, body, limit = "x" * rng.randrange(0, 300), value(0), rng.randrange(10, 6000)
        if small(code, body, limit):
            passed += 1
            assert len(code) + len(json.dumps(body)) <= limit
    assert passed > 300  # it does pass small rows
