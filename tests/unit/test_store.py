"""The history store on SQLite: ordered executions, retention, and which sessions a
start-up may close (only those of servers that are gone)."""

from __future__ import annotations

import time
from pathlib import Path

from api.server.store import HistoryStore


async def test_history_is_ordered_durable_and_purged_after_retention(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(url)
    await store.add_session("s-1", "k-a", {"memory_mb": 1024}, {"team": "x"})
    for code in ("a = 1", "a + 1"):
        await store.add_execution("s-1", code, {"status": "ok", "duration_ms": 1.0,
                                                "outputs": []}, time.time())
    store.close()

    reopened = HistoryStore(url, server_id="srv-2")  # a restart: same file, WAL mode
    history = await reopened.history("s-1")
    assert [(h["seq"], h["code"]) for h in history] == [(1, "a = 1"), (2, "a + 1")]
    assert await reopened.heartbeat() == 1  # s-1's server is gone: closed now
    row = await reopened.get_session("s-1")
    assert row is not None and row["closed_at"] is not None and row["metadata"] == {"team": "x"}
    assert await reopened.purge_closed_before(row["closed_at"] - 1) == 0  # still retained
    assert await reopened.purge_closed_before(time.time() + 1) == 1
    assert await reopened.get_session("s-1") is None and await reopened.history("s-1") == []
    reopened.close()


async def test_a_starting_server_leaves_a_live_servers_sessions_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    first, second = HistoryStore(url, server_id="srv-a"), HistoryStore(url, server_id="srv-b")
    await first.heartbeat()
    await first.add_session("s-a", "k", {}, {})
    assert await second.heartbeat(stale_after_s=60) == 0  # srv-a is alive: s-a stays open
    assert (await second.get_session("s-a") or {})["closed_at"] is None
    # srv-a stops beating (a crash on another host): after the stale period it is dead.
    assert second._beat(time.time() + 120, stale_after_s=60) == 1
    assert (await second.get_session("s-a") or {})["closed_at"] is not None
    first.close()
    second.close()
