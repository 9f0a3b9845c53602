"""The history's caps (api/server/store.py) and the notebook export's shape (sandbox/_notebook.py),
as pure logic on SQLite: exact bounds, every cut said, and a notebook nbformat accepts
whatever a box put in the outputs. The attacks themselves run against a real server in
tests/security/test_history_caps.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nbformat
from hypothesis import given, settings
from hypothesis import strategies as st

from api.server.export import build
from api.server.store import STUB_MAX, HistoryStore, fit_execution, stub_execution
from sandbox._models import DisplayOutput, ErrorOutput, ExecutionResult, StreamOutput
from sandbox._notebook import SKIPPED, notebook_chunks, notebook_dict

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_outputs = st.lists(st.one_of(
    st.builds(StreamOutput, name=st.sampled_from(["stdout", "stderr"]), text=st.text()),
    st.builds(ErrorOutput, ename=st.text(max_size=30), evalue=st.text(max_size=50),
              traceback=st.lists(st.text(max_size=50), max_size=5)),
    st.builds(DisplayOutput, type=st.sampled_from(["display_data", "execute_result"]),
              data=st.dictionaries(st.sampled_from(["text/plain", "image/png", "text/html",
                                                    "application/json",
                                                    "application/vnd.x+json", "x/y"]),
                                   _json, max_size=4),
              metadata=st.dictionaries(st.text(max_size=8), _json, max_size=3),
              execution_count=st.none() | st.integers(-5, 50)),
), max_size=8)


def result(outputs: list[Any], notes: list[str] | None = None) -> dict[str, Any]:
    return ExecutionResult(status="ok", execution_count=1, outputs=outputs, duration_s=0.01,
                           notes=notes or []).to_dict()


def row_chars(code: str, body: dict[str, Any]) -> int:
    return len(code) + len(json.dumps(body))


# -- one execution's row -----------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.text(max_size=3000), st.lists(st.text(max_size=5000), max_size=30),
       st.integers(8 * 1024, 64 * 1024))
def test_a_row_is_never_over_its_cap_and_says_what_it_cut(code: str, texts: list[str],
                                                          cap: int) -> None:
    body = result([StreamOutput(name="stdout", text=t) for t in texts])
    kept_code, kept, text, said = fit_execution(code, body, cap)
    assert row_chars(kept_code, kept) == len(kept_code) + len(text) <= cap
    if row_chars(code, body) <= cap:
        assert (kept_code, kept, said) == (code, body, [])
    else:
        assert said and kept["truncated"] and all(n in kept["notes"] for n in said)
        # What is kept is a prefix of the outputs, and still a valid result.
        assert kept["outputs"] == body["outputs"][:len(kept["outputs"])]
        ExecutionResult.from_dict(kept)


def test_the_repeated_fields_go_first_and_lose_nothing() -> None:
    body = result([StreamOutput(name="stdout", text="x" * 6000)])
    _, kept, _, said = fit_execution("print()", body, 10_000)  # both copies: 12 KB
    assert kept["outputs"] == body["outputs"] and kept["stdout"] == ""
    assert ExecutionResult.from_dict(kept).stdout == "x" * 6000
    assert len(said) == 1 and "repeat the outputs" in said[0]


def test_a_stub_is_small_whatever_it_is_given() -> None:
    body = result([StreamOutput(name="stdout", text="x" * 100_000)],
                  notes=["\u2603" * 2000] * 50)
    body["error"] = {"ename": "\u2603" * 5000, "evalue": "\x00" * 5000, "traceback": ["t"]}
    code, stub, text = stub_execution("y" * 50_000, body, "history: full")
    assert len(code) + len(text) <= STUB_MAX
    assert stub["notes"][0] == "history: full" and stub["outputs"] == []
    assert code.startswith("y" * 1000) and "more characters of code not stored" in code


# -- one key's history -------------------------------------------------------------------

async def test_a_keys_history_stops_at_its_cap_and_purges_give_it_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(url, max_execution_bytes=64 * 1024, max_key_bytes=200_000)
    await store.add_session("s-a", "k-a", {}, {})
    await store.add_session("s-b", "k-b", {}, {})
    said: list[list[str]] = []
    for _ in range(8):
        notes: list[str] = []
        await store.add_execution("s-a", "print()", result(
            [StreamOutput(name="stdout", text="x" * 20_000)]), time.time(), notes)
        said.append(notes)
    full = [i for i, n in enumerate(said) if any("history is full" in x for x in n)]
    assert full == [4, 5, 6, 7]  # 4 rows of about 40 KB fit in 200 KB, then stubs
    history = await store.history("s-a")
    sizes = [len(h["code"]) + len(json.dumps(h["result"])) for h in history]
    assert sum(sizes[:4]) <= 200_000 and all(s <= STUB_MAX for s in sizes[4:])
    assert store.key_usage("k-a") == sum(sizes)
    await store.add_execution("s-b", "1", result([]), time.time())  # another key: its own
    assert store.key_usage("k-b") > 0 and len(await store.history("s-b")) == 1
    await store.close_session("s-a")
    assert await store.purge_closed_before(time.time() + 1) == 1
    assert store.key_usage("k-a") == 0
    store.close()


async def test_a_database_from_before_the_counter_is_counted_at_the_first_write(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(url)
    await store.add_session("s-1", "k", {}, {})
    await store.add_execution("s-1", "a = 1", result([]), time.time())
    with store.engine.begin() as conn:  # as if the rows predated history_usage
        conn.exec_driver_sql("DELETE FROM history_usage")
    await store.add_execution("s-1", "a + 1", result([]), time.time())
    history = await store.history("s-1")
    assert store.key_usage("k") == sum(len(h["code"]) + len(json.dumps(h["result"]))
                                       for h in history)
    store.close()


# -- the notebook ------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=40), st.none() | _outputs), max_size=5))
def test_an_export_is_valid_whatever_the_box_put_in_its_outputs(
        cells: list[tuple[str, list[Any] | None]]) -> None:
    given_cells = [(code, None if outs is None else ExecutionResult(
        status="ok", execution_count=3, outputs=outs, duration_s=0.0)) for code, outs in cells]
    nb = notebook_dict(given_cells, {"agentbox": {"session": "s"}}, max_outputs=10)
    text = b"".join(notebook_chunks(nb)).decode()
    assert json.loads(text) == nb
    nbformat.validate(nbformat.reads(text, as_version=4))


async def test_an_export_reads_a_bounded_history_and_says_what_it_left_out(
        tmp_path: Path) -> None:
    store = HistoryStore(f"sqlite:///{tmp_path / 'h.sqlite3'}")
    await store.add_session("s-1", "k", {}, {})
    for i in range(6):
        await store.add_execution("s-1", f"# cell {i}\n" + "c" * 3000, result(
            [StreamOutput(name="stdout", text="o" * 20_000)]), time.time())
    text = b"".join(build(store.engine, "s-1", {}, max_bytes=100_000, max_outputs=100))
    nb = nbformat.reads(text.decode(), as_version=4)
    nbformat.validate(nb)
    assert [bool(c.outputs) for c in nb.cells] == [True, True, False, False, False, False]
    for cell in nb.cells[2:]:
        assert cell.source.startswith("# cell ")
        assert "code not exported past 1000 characters" in cell.source
        assert cell.metadata.agentbox.notes[0].startswith(SKIPPED)
    assert nb.metadata.agentbox.truncated.cells_without_outputs == 4
    store.close()
