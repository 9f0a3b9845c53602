"""Issue 11, class 3, against a real server: what the history keeps is capped per
execution and per key, exactly, and said; a notebook export is bounded and built off
the event loop, so another key's ``1+1`` keeps answering while a huge one is built.

Reproduced on the old code: forged ``error`` messages went whole into the history
(about 120 MB from one cell), nothing bounded one key's history, and the export of a
large history (10,000 outputs and 16 MB of text here) was built on the event loop in
seconds during which every other session stalled.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nbformat
import pytest
from sqlalchemy import Text, cast, func, select

from api.server.settings import Settings
from api.server.store import STUB_MAX, HistoryStore, executions, history_usage, sessions
from tests.api.conftest import KEY_A, KEY_B, make_settings, run_server
from tests.security.test_sse_backpressure import Victim

KiB, MiB = 1 << 10, 1 << 20
KEY_C = "key-c-secret"
ROW_CAP = 256 * KiB
KEY_CAP = 2 * MiB
EXPORT_CAP = 1 * MiB
EXPORT_OUTPUTS = 100
P99_BOUND_S = 0.25


@pytest.fixture(scope="module")
def small(engine: object, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[str, Settings]]:
    """A server with small history and export caps (three keys)."""
    settings = make_settings(tmp_path_factory.mktemp("caps-data"),
                             api_keys=f"{KEY_A},{KEY_B},{KEY_C}",
                             history_max_execution_bytes=ROW_CAP,
                             history_max_bytes_per_key=KEY_CAP,
                             notebook_max_bytes=EXPORT_CAP,
                             notebook_max_outputs=EXPORT_OUTPUTS)
    with run_server(settings) as url:
        yield url, settings


def client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"})


def new_session(c: httpx.Client) -> str:
    resp = c.post("/v1/sessions")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def execute(c: httpx.Client, sid: str, code: str) -> dict[str, Any]:
    resp = c.post(f"/v1/sessions/{sid}/execute", json={"code": code})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def stored(settings: Settings, key_id: str) -> tuple[list[int], int]:
    """The sizes of *key_id*'s stored rows (as the store counts them, in the database)
    and what its usage counter says."""
    store = HistoryStore(settings.resolved_database_url())
    try:
        with store.engine.connect() as conn:
            sizes = [int(n) for n in conn.execute(
                select(func.length(executions.c.code)
                       + func.length(cast(executions.c.result, Text)))
                .select_from(executions.join(sessions,
                                             executions.c.session_id == sessions.c.id))
                .where(sessions.c.key_id == key_id).order_by(executions.c.id)).scalars()]
            usage = conn.execute(select(history_usage.c.chars)
                                 .where(history_usage.c.key_id == key_id)).scalar()
        return sizes, int(usage or 0)
    finally:
        store.close()


def rows(settings: Settings, key_id: str) -> list[dict[str, Any]]:
    """The stored results of *key_id*'s executions, in order."""
    store = HistoryStore(settings.resolved_database_url())
    try:
        with store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(executions.c.result)
                .select_from(executions.join(sessions,
                                             executions.c.session_id == sessions.c.id))
                .where(sessions.c.key_id == key_id).order_by(executions.c.id)).scalars()]
    finally:
        store.close()


FORGED_ERRORS = """
k = get_ipython().kernel
parent = k.get_parent("shell")
for i in range(40):   # 40 x 2 MB of traceback
    k.session.send(k.iopub_socket, "error", {
        "ename": "E" * 2000, "evalue": "v" * 50_000, "traceback": ["t" * 10_000] * 200,
    }, parent=parent)
print("sent")
"""


def test_forged_errors_are_capped_in_the_response_and_in_the_history(
        small: tuple[str, Settings]) -> None:
    url, settings = small
    with client(url, KEY_B) as b:
        sid = new_session(b)
        body = execute(b, sid, FORGED_ERRORS)
        b.delete(f"/v1/sessions/{sid}")
    # The response: the execution's own caps (4 MiB of rich output, said).
    rich = sum(len(json.dumps(o)) for o in body["outputs"] if o["type"] == "error")
    assert body["truncated"] and rich < 5 * MiB
    assert any("output truncated" in n for n in body["notes"]), body["notes"]
    # The history: the row's cap, exactly, and the caller was told what it cut.
    assert any(n.startswith("history: this row is capped") for n in body["notes"])
    sizes, usage = stored(settings, settings.keys()[KEY_B])
    assert sizes and max(sizes) <= ROW_CAP and usage == sum(sizes)


def test_one_keys_history_is_capped_and_another_keys_is_not_touched(
        small: tuple[str, Settings]) -> None:
    url, settings = small
    with client(url, KEY_A) as a, client(url, KEY_C) as c:
        sid = new_session(a)
        bodies = [execute(a, sid, f"print('x' * 100_000)  # {i}") for i in range(14)]
        other = new_session(c)
        theirs = execute(c, other, "print('c' * 100_000)")
        cells = a.get(f"/v1/sessions/{sid}/notebook").json()["cells"]
        a.delete(f"/v1/sessions/{sid}")
        c.delete(f"/v1/sessions/{other}")
    full = [i for i, b in enumerate(bodies)
            if not any("history is full" in n for n in b["notes"])]
    assert full == list(range(len(full))) and 5 <= len(full) < 14  # a prefix, then stubs
    for b in bodies:  # the client always got its whole result
        assert b["status"] == "ok" and len(b["stdout"]) == 100_001
    sizes, usage = stored(settings, settings.keys()[KEY_A])
    assert usage == sum(sizes)
    assert sum(sizes[:len(full)]) <= KEY_CAP  # full rows never pass the cap...
    assert all(s <= STUB_MAX for s in sizes[len(full):])  # ...and stubs are small
    # Every cell that ran is in the history: stubs keep the code, status and notes.
    assert [c["source"] for c in cells] == [f"print('x' * 100_000)  # {i}" for i in range(14)]
    stubs = rows(settings, settings.keys()[KEY_A])[len(full):]
    assert stubs and all(r["outputs"] == [] and r["status"] == "ok" and r["truncated"]
                         for r in stubs)
    assert all(any("history is full" in n for n in r["notes"]) for r in stubs)
    # Another key's history is its own.
    assert not any(n.startswith("history") for n in theirs["notes"])


def test_a_notebook_export_is_bounded_and_says_what_it_left_out(
        small: tuple[str, Settings]) -> None:
    url, _ = small
    with client(url, KEY_C) as c:
        sid = new_session(c)
        for i in range(8):  # 8 rows of about 200 KB: more than the 1 MiB an export reads
            execute(c, sid, f"print('{i}' * 100_000)")
        execute(c, sid, "from IPython.display import publish_display_data\n"
                        "for i in range(300): publish_display_data({'text/plain': '.'})")
        resp = c.get(f"/v1/sessions/{sid}/notebook")
        c.delete(f"/v1/sessions/{sid}")
    assert resp.status_code == 200
    nb = nbformat.reads(resp.text, as_version=4)
    nbformat.validate(nb)
    assert len(nb.cells) == 9  # every cell, with its code
    with_outputs = [c for c in nb.cells if c.outputs]
    assert 2 <= len(with_outputs) <= 5 and nb.cells[:len(with_outputs)] == with_outputs
    assert sum(len(c.outputs) for c in nb.cells) <= EXPORT_OUTPUTS
    for cell in nb.cells[len(with_outputs):]:
        assert any("outputs not exported" in n for n in cell.metadata.agentbox.notes)
    assert nb.metadata.agentbox.truncated.cells_without_outputs == 9 - len(with_outputs)


# -- a huge export while another key works --------------------------------------------
@pytest.fixture(scope="module")
def roomy(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with the default history and export caps."""
    with run_server(make_settings(tmp_path_factory.mktemp("export-data"))) as url:
        yield url


HUGE_HISTORY = [
    *["print('x' * 4_000_000)"] * 4,  # 4 MiB of stdout each (stored twice: 32 MB)
    "from IPython.display import publish_display_data\n"
    "for i in range(10_000): publish_display_data({'text/plain': str(i)})",
]


def test_another_key_keeps_answering_while_a_huge_export_is_built(roomy: str) -> None:
    with client(roomy, KEY_A) as a, client(roomy, KEY_B) as b:
        sid = new_session(a)
        kept = []
        for code in HUGE_HISTORY:
            body = execute(a, sid, code)
            assert body["status"] == "ok"
            kept.append(len(body["outputs"]))
        victim = new_session(b)
        exports: list[tuple[int, bytes]] = []

        def export_in_a_loop(stop: threading.Event) -> None:
            with client(roomy, KEY_A) as mine:
                while not stop.is_set():
                    resp = mine.get(f"/v1/sessions/{sid}/notebook")
                    exports.append((resp.status_code, resp.content))

        stop = threading.Event()
        exporters = [threading.Thread(target=export_in_a_loop, args=(stop,), daemon=True)
                     for _ in range(2)]
        with Victim(roomy, victim) as v:
            for t in exporters:
                t.start()
            deadline = time.monotonic() + 30
            while len(exports) < 4:  # at least four huge exports built meanwhile
                assert time.monotonic() < deadline, f"only {len(exports)} exports in 30 s"
                time.sleep(0.05)
            stop.set()
            for t in exporters:
                t.join(timeout=60)
        a.delete(f"/v1/sessions/{sid}")
        b.delete(f"/v1/sessions/{victim}")
    assert {status for status, _ in exports} == {200}
    assert len(exports[0][1]) > 15 * MiB  # (the notebook holds each output once)
    nb = nbformat.reads(exports[0][1].decode(), as_version=4)
    nbformat.validate(nb)
    assert [len(c.outputs) for c in nb.cells] == kept  # every output, as the cells got them
    # The 10,000 displays come in one burst: when the host reads slower than the kernel
    # writes (a loaded machine), its IOPub PUB socket drops past ZMQ's high-water mark
    # (1,000 queued messages) and the cell keeps fewer, 6,637 once in a loaded CI run.
    # The export is huge either way (the 16 MiB of stdout above), and has what was kept.
    assert kept[:4] == [1, 1, 1, 1] and kept[4] >= 1000
    assert len(v.latencies) >= 10 and set(v.statuses) == {200}
    assert v.p99() < P99_BOUND_S, f"victim p99 {v.p99():.3f}s over {len(v.latencies)} cells"
