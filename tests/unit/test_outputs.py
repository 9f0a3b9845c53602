"""OutputAssembler: folding Jupyter IOPub messages into the outputs of one execution."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox._models import DisplayOutput, ErrorOutput, StreamOutput
from sandbox._outputs import (
    MARKER_RESERVE,
    ClearOutput,
    DisplayUpdate,
    OutputAssembler,
    output_size,
    strip_ansi,
)

_ids = itertools.count()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-png-bytes").decode()


def msg(msg_type: str, content: Any = None, **extra: Any) -> dict[str, Any]:
    """An IOPub message shaped like jupyter_client delivers it."""
    m: dict[str, Any] = {
        "header": {"msg_type": msg_type, "msg_id": f"m{next(_ids)}"},
        "parent_header": {"msg_type": "execute_request", "msg_id": "exec-1"},
        "content": {} if content is None else content,
        "metadata": {},
    }
    m.update(extra)
    return m


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return msg("stream", {"name": name, "text": text})


def display(data: dict[str, Any], metadata: dict[str, Any] | None = None,
            display_id: str | None = None, kind: str = "display_data",
            **content: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data, "metadata": metadata or {}, **content}
    if display_id is not None:
        body["transient"] = {"display_id": display_id}
    return msg(kind, body)


def fold(*messages: dict[str, Any], max_bytes: int = 1 << 20, **caps: int) -> OutputAssembler:
    asm = OutputAssembler(max_bytes=max_bytes, **caps)
    for m in messages:
        asm.feed(m)
    return asm


def dicts(asm: OutputAssembler) -> list[dict[str, Any]]:
    return [o.to_dict() for o in asm.outputs]


# -- streams -------------------------------------------------------------------------

def test_consecutive_stream_chunks_merge_per_name_but_not_across_interleaving() -> None:
    asm = fold(stream("a"), stream("b"), stream("E1", "stderr"), stream("E2", "stderr"),
               stream("c"))
    assert dicts(asm) == [
        {"type": "stream", "name": "stdout", "text": "ab"},
        {"type": "stream", "name": "stderr", "text": "E1E2"},
        {"type": "stream", "name": "stdout", "text": "c"},
    ]


def test_feed_returns_each_stream_chunk_as_its_own_event() -> None:
    asm = OutputAssembler(max_bytes=1000)
    first, second = asm.feed(stream("one\n")), asm.feed(stream("two\n"))
    assert first == [StreamOutput(name="stdout", text="one\n")]
    assert second == [StreamOutput(name="stdout", text="two\n")]
    # Both fed before checking: the live event is not the merged output mutated later.
    assert asm.outputs == [StreamOutput(name="stdout", text="one\ntwo\n")]


# -- rich displays -------------------------------------------------------------------

def test_display_keeps_the_complete_mime_bundle_and_metadata() -> None:
    data = {
        "text/plain": "<Figure>",
        "text/html": "<b>hi</b>",
        "image/png": PNG,
        "application/json": {"a": [1, 2, {"b": None}]},
        "application/vnd.custom+json": {"x": 1},
    }
    metadata = {"image/png": {"width": 640, "height": 480}, "isolated": True}
    asm = fold(display(data, metadata))
    [out] = asm.outputs
    assert isinstance(out, DisplayOutput)
    assert (out.type, out.data, out.metadata) == ("display_data", data, metadata)


def test_execute_result_keeps_its_execution_count() -> None:
    asm = fold(msg("execute_input", {"code": "1+1", "execution_count": 7}),
               display({"text/plain": "2"}, kind="execute_result", execution_count=7))
    assert asm.execution_count == 7
    assert dicts(asm) == [{"type": "execute_result", "data": {"text/plain": "2"},
                           "metadata": {}, "execution_count": 7}]


def test_display_data_never_carries_an_execution_count() -> None:
    asm = fold(display({"text/plain": "x"}, execution_count=3))
    assert asm.outputs[0].execution_count is None  # type: ignore[union-attr]


# -- clear_output --------------------------------------------------------------------

def test_clear_output_without_wait_clears_at_once() -> None:
    asm = OutputAssembler(max_bytes=1000)
    asm.feed(stream("old"))
    events = asm.feed(msg("clear_output", {"wait": False}))
    assert events == [ClearOutput(wait=False)]
    assert asm.outputs == []
    asm.feed(stream("new"))
    assert dicts(asm) == [{"type": "stream", "name": "stdout", "text": "new"}]


def test_clear_output_wait_clears_only_when_the_next_output_arrives() -> None:
    asm = OutputAssembler(max_bytes=1000)
    asm.feed(stream("old"))
    assert asm.feed(msg("clear_output", {"wait": True})) == [ClearOutput(wait=True)]
    assert dicts(asm) == [{"type": "stream", "name": "stdout", "text": "old"}]
    asm.feed(display({"text/plain": "new"}))
    assert dicts(asm) == [{"type": "display_data", "data": {"text/plain": "new"},
                           "metadata": {}}]


def test_clear_output_wait_with_no_later_output_keeps_the_old_output() -> None:
    asm = fold(stream("kept"), msg("clear_output", {"wait": True}), msg("status", {
        "execution_state": "idle"}))
    assert asm.finish() == [StreamOutput(name="stdout", text="kept")]


# -- update_display_data -------------------------------------------------------------

def test_update_display_data_replaces_the_display_with_that_id() -> None:
    asm = fold(display({"text/plain": "0%"}, display_id="bar"),
               display({"text/plain": "other"}, display_id="other"),
               stream("log"))
    events = asm.feed(display({"text/plain": "100%", "text/html": "<p>100%</p>"},
                              {"done": True}, display_id="bar", kind="update_display_data"))
    [event] = events
    assert isinstance(event, DisplayUpdate)
    assert event.display_id == "bar"
    assert event.to_dict() == {"type": "update_display_data", "display_id": "bar",
                               "data": {"text/plain": "100%", "text/html": "<p>100%</p>"},
                               "metadata": {"done": True}}
    bar, other, log = asm.outputs
    assert isinstance(bar, DisplayOutput) and isinstance(other, DisplayOutput)
    assert bar.data == {"text/plain": "100%", "text/html": "<p>100%</p>"}
    assert bar.metadata == {"done": True} and bar.display_id == "bar"
    assert other.data == {"text/plain": "other"}
    assert log == StreamOutput(name="stdout", text="log")


# -- errors --------------------------------------------------------------------------

def test_ansi_colour_is_stripped_from_traceback_ename_and_evalue() -> None:
    asm = fold(msg("error", {
        "ename": "\x1b[31mZeroDivisionError\x1b[0m",
        "evalue": "\x1b[1mdivision by zero\x1b[0m",
        "traceback": ["\x1b[0;31m----\x1b[0m", "\x1b[1;32m1/0\x1b[0m\x1b]8;;http://x\x07"],
    }))
    [err] = asm.outputs
    assert err == ErrorOutput(ename="ZeroDivisionError", evalue="division by zero",
                              traceback=["----", "1/0"])


def test_strip_ansi_leaves_plain_text_alone() -> None:
    assert strip_ansi("\x1b[38;5;196mred\x1b[m and [brackets] 100%") == "red and [brackets] 100%"


# -- the byte cap --------------------------------------------------------------------

def test_stream_flood_keeps_max_bytes_markers_included_and_says_so() -> None:
    asm = OutputAssembler(max_bytes=1024)
    for _ in range(100):
        asm.feed(stream("x" * 100))
    assert asm.truncated
    outputs = asm.finish()
    [out] = outputs
    assert isinstance(out, StreamOutput)
    # Room for the marker is held back (128 bytes each for stdout and stderr): the cap
    # holds for everything kept, the marker too.
    assert out.text.count("x") == 1024 - 2 * MARKER_RESERVE
    assert "[output truncated" in out.text and "on stdout" in out.text
    assert len(out.text.encode()) <= 1024 and asm.stream_bytes == len(out.text.encode())
    assert any("truncated" in note for note in asm.notes)


def test_chunks_past_the_cap_are_not_sent_live() -> None:
    asm = OutputAssembler(max_bytes=1024)
    room = 1024 - 2 * MARKER_RESERVE
    assert asm.feed(stream("x" * (room - 2))) == [StreamOutput(name="stdout",
                                                                text="x" * (room - 2))]
    assert asm.feed(stream("y" * 8)) == [StreamOutput(name="stdout", text="yy")]
    assert asm.feed(stream("z")) == []


def test_oversize_display_is_replaced_by_a_placeholder() -> None:
    big = base64.b64encode(b"\0" * 5000).decode()
    asm = fold(display({"image/png": big, "text/plain": "<Figure>"}), max_bytes=1024)
    [out] = asm.outputs
    assert isinstance(out, DisplayOutput)
    assert set(out.data) == {"text/plain"}
    assert "dropped" in out.data["text/plain"] and "image/png" in out.data["text/plain"]
    assert out.metadata["agentbox"]["dropped"] is True
    assert asm.truncated
    asm.finish()
    assert any("truncated" in note for note in asm.notes)


def test_output_within_the_cap_is_not_marked_truncated() -> None:
    asm = fold(stream("x" * 100), display({"text/plain": "ok"}), max_bytes=1024)
    assert asm.finish() == [StreamOutput(name="stdout", text="x" * 100),
                            DisplayOutput(type="display_data", data={"text/plain": "ok"})]
    assert not asm.truncated and asm.notes == []


def test_repeated_progress_updates_do_not_exhaust_the_cap() -> None:
    asm = fold(display({"text/plain": "0%"}, display_id="p"), max_bytes=2048)
    for i in range(1, 301):
        asm.feed(display({"text/plain": f"{i / 3:.0f}%"}, display_id="p",
                         kind="update_display_data"))
    assert asm.outputs[0].data == {"text/plain": "100%"}  # type: ignore[union-attr]


def test_clear_and_reprint_loop_keeps_the_last_output() -> None:
    asm = OutputAssembler(max_bytes=2048)
    for i in range(300):
        asm.feed(msg("clear_output", {"wait": True}))
        asm.feed(stream(f"step {i}\n"))
    assert asm.finish() == [StreamOutput(name="stdout", text="step 299\n")]


def test_cap_counts_bytes_of_non_ascii_text() -> None:
    asm = fold(stream("é" * 1024), max_bytes=1024)
    assert len(asm.outputs[0].text.encode()) <= 1024  # type: ignore[union-attr]


# -- malformed messages --------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    pytest.param({"header": {"msg_type": "stream", "msg_id": "1"}}, id="missing-content"),
    pytest.param(msg("stream", "text"), id="content-not-a-dict"),
    pytest.param(msg("display_data", {"data": ["text/plain", "x"]}), id="data-not-a-dict"),
    pytest.param(msg("display_data", {"data": {"text/plain": "x"}, "metadata": "m"}),
                 id="metadata-not-a-dict"),
    pytest.param(msg("stream", {"name": "stdout", "text": 42}), id="stream-text-not-str"),
    pytest.param(msg("stream", {"name": "stdin", "text": "x"}), id="unknown-stream-name"),
    pytest.param(msg("update_display_data", {"data": {"text/plain": "x"}, "metadata": {}}),
                 id="update-without-display-id"),
    pytest.param(msg("error", {"ename": 1, "evalue": "v", "traceback": []}), id="bad-ename"),
    pytest.param(msg("error", {"ename": "E", "evalue": "v", "traceback": "tb"}),
                 id="traceback-not-a-list"),
    pytest.param({"content": {}}, id="missing-header"),
    pytest.param(None, id="not-a-dict"),
])
def test_malformed_messages_are_counted_and_never_raise(bad: Any) -> None:
    asm = OutputAssembler(max_bytes=1000)
    asm.feed(stream("before"))
    assert asm.feed(bad) == []
    assert asm.malformed == 1
    assert dicts(asm) == [{"type": "stream", "name": "stdout", "text": "before"}]
    asm.finish()
    assert any("malformed" in note for note in asm.notes)


# -- status and bookkeeping ----------------------------------------------------------

def test_status_idle_sets_idle_and_busy_does_not() -> None:
    asm = OutputAssembler(max_bytes=1000)
    assert asm.feed(msg("status", {"execution_state": "busy"})) == []
    assert not asm.idle
    asm.feed(msg("status", {"execution_state": "idle"}))
    assert asm.idle


def test_non_output_messages_produce_nothing() -> None:
    asm = fold(msg("comm_open", {"comm_id": "c", "target_name": "t", "data": {}}),
               msg("execute_input", {"code": "x", "execution_count": 3}))
    assert asm.outputs == [] and asm.malformed == 0 and asm.execution_count == 3


# -- every kind of output is capped, exactly (P7) -------------------------------------

def error(ename: str = "E", evalue: str = "v", traceback: list[Any] | None = None
          ) -> dict[str, Any]:
    return msg("error", {"ename": ename, "evalue": evalue, "traceback": traceback or []})


def invariants(asm: OutputAssembler) -> None:
    """What every state of the fold must satisfy: the caps hold, and the counters
    are the sums of what is kept."""
    streams = [o for o in asm.outputs if isinstance(o, StreamOutput)]
    rich = [o for o in asm.outputs if not isinstance(o, StreamOutput)]
    assert asm.stream_bytes == sum(output_size(o) for o in streams) <= asm.max_bytes
    assert asm.rich_bytes == sum(output_size(o) for o in rich) <= asm.max_bytes
    assert len(asm.outputs) <= asm.max_outputs
    assert asm.live_events <= asm.max_live_events
    assert asm.live_bytes <= asm.max_live_bytes


def test_a_flood_of_error_messages_is_capped_like_any_output() -> None:
    # A forged error costs the box as little as a print: 120 MB of tracebacks from
    # one cell were kept before.
    asm = OutputAssembler(max_bytes=64 * 1024)
    for _ in range(200):
        asm.feed(error("Boom" * 300, "v" * 20_000, ["line " * 2000] * 300))
    invariants(asm)
    asm.finish()
    invariants(asm)
    assert asm.truncated and asm.rich_bytes <= 64 * 1024
    assert any("output truncated" in n for n in asm.notes)
    assert any("not kept" in n for n in asm.notes)


def test_one_huge_error_is_cut_to_the_room_left_and_says_how_much() -> None:
    asm = fold(error("ValueError", "bad value", [f"frame {i} " + "x" * 500 for i in range(200)]),
               max_bytes=4096)
    invariants(asm)
    [err] = asm.outputs
    assert isinstance(err, ErrorOutput)
    assert (err.ename, err.evalue) == ("ValueError", "bad value")
    assert err.traceback[0].startswith("frame 0 ")
    assert "more traceback lines" in err.traceback[-1] and "dropped" in err.traceback[-1]
    assert asm.truncated


def test_error_fields_keep_their_own_caps() -> None:
    asm = fold(error("N" * 5000, "V" * 50_000, ["L" * 50_000] * 300), max_bytes=4 << 20)
    [err] = asm.outputs
    assert isinstance(err, ErrorOutput)
    assert len(err.ename) == 1000 and len(err.evalue) == 10_000
    assert len(err.traceback) == 201 and all(len(line) <= 10_000 for line in err.traceback)
    assert err.traceback[-1] == "[100 more traceback lines dropped]"


def test_traceback_lines_that_are_not_text_are_not_stringified() -> None:
    asm = fold(error(traceback=[list(range(100_000)), "ok"]))
    assert asm.outputs[0].traceback == ["[not text]", "ok"]  # type: ignore[union-attr]


def test_tens_of_thousands_of_tiny_displays_keep_at_most_max_outputs() -> None:
    asm = OutputAssembler(max_bytes=1 << 20, max_outputs=100)
    for i in range(20_000):
        asm.feed(display({} if i % 2 else {"text/plain": "."}))
    invariants(asm)
    assert len(asm.outputs) == 100 and asm.dropped_outputs == 19_900
    asm.finish()
    assert asm.truncated and any("19900 output(s) not kept" in n for n in asm.notes)


def test_interleaved_stdout_and_stderr_count_as_outputs() -> None:
    asm = OutputAssembler(max_bytes=1 << 20, max_outputs=10)
    for i in range(1000):
        asm.feed(stream("x", "stdout" if i % 2 else "stderr"))
    asm.finish()
    invariants(asm)
    assert len(asm.outputs) == 10 and asm.truncated


def test_placeholders_of_dropped_displays_count_and_stop_at_the_cap() -> None:
    big = "x" * 5000
    asm = OutputAssembler(max_bytes=2048)
    for _ in range(500):
        asm.feed(display({"text/plain": big}))
    invariants(asm)
    assert 0 < len(asm.outputs) < 20  # a few placeholders, then nothing more fits
    assert all(o.metadata["agentbox"]["dropped"] for o in asm.outputs)  # type: ignore[union-attr]
    asm.finish()
    assert any("output(s) not kept" in n for n in asm.notes)


def test_an_update_shown_in_several_places_counts_once_per_copy() -> None:
    asm = OutputAssembler(max_bytes=2048)
    for _ in range(3):
        asm.feed(display({"text/plain": "0%"}, display_id="p"))
    asm.feed(display({"text/plain": "y" * 900}, display_id="p", kind="update_display_data"))
    invariants(asm)  # 3 x 900 > 2048: placeholders in all three places
    assert all(o.metadata.get("agentbox", {}).get("dropped")  # type: ignore[union-attr]
               for o in asm.outputs)
    asm.feed(display({"text/plain": "z" * 600}, display_id="p", kind="update_display_data"))
    invariants(asm)
    assert [o.data for o in asm.outputs] == [{"text/plain": "z" * 600}] * 3  # type: ignore[union-attr]


def test_an_update_for_an_unknown_display_is_live_only_and_capped() -> None:
    asm = OutputAssembler(max_bytes=1024)
    [event] = asm.feed(display({"text/plain": "w" * 100_000}, display_id="elsewhere",
                               kind="update_display_data"))
    assert isinstance(event, DisplayUpdate)
    assert "display dropped" in event.output.data["text/plain"]
    assert asm.outputs == [] and asm.rich_bytes == 0


def test_clear_and_print_loop_stops_going_live_at_the_live_event_cap() -> None:
    asm = OutputAssembler(max_bytes=4096, max_live_events=100)
    sent = 0
    for i in range(10_000):
        sent += len(asm.feed(msg("clear_output", {"wait": True})))
        sent += len(asm.feed(stream(f"step {i}\n")))
    invariants(asm)
    assert sent == 100 and asm.live_dropped == 19_900
    assert asm.finish() == [StreamOutput(name="stdout", text="step 9999\n")]
    assert not asm.truncated  # what is kept is complete; only the live feed stopped
    assert any("live output stopped: 19900 event(s)" in n for n in asm.notes)


def test_updates_of_unknown_displays_stop_going_live_at_the_live_byte_cap() -> None:
    asm = OutputAssembler(max_bytes=4096, max_live_bytes=100_000)
    sent = [e for _ in range(1000)
            for e in asm.feed(display({"text/plain": "u" * 1000}, display_id="gone",
                                      kind="update_display_data"))]
    invariants(asm)
    assert len(sent) == 99 and asm.live_bytes <= 100_000
    asm.finish()
    assert any("live output stopped" in n for n in asm.notes)


def test_the_live_feed_is_a_prefix_without_holes() -> None:
    asm = OutputAssembler(max_bytes=1 << 20, max_live_bytes=1000)
    assert asm.feed(stream("a" * 900))
    assert asm.feed(stream("b" * 200)) == []  # over the live budget
    assert asm.feed(stream("c")) == []  # would fit, but the feed has stopped
    assert asm.finish()[0].text == "a" * 900 + "b" * 200 + "c"  # type: ignore[union-attr]


def test_a_marker_that_finds_no_room_is_said_in_notes_only() -> None:
    asm = OutputAssembler(max_bytes=1 << 20, max_outputs=2)
    asm.feed(display({"text/plain": "a"}))
    asm.feed(display({"text/plain": "b"}))
    asm.feed(stream("lost"))
    asm.finish()
    invariants(asm)
    assert len(asm.outputs) == 2 and asm.truncated
    assert any("1 output(s) not kept" in n for n in asm.notes)


_KINDS = ["out", "err", "big", "disp", "bigdisp", "upd", "bigupd", "foreign", "clear",
          "clearwait", "error", "bigerror"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 3000)), max_size=80),
       st.integers(1024, 8192), st.integers(1, 12))
def test_the_caps_hold_for_any_sequence_of_messages(ops: list[tuple[str, int]], cap: int,
                                                     max_outputs: int) -> None:
    asm = OutputAssembler(max_bytes=cap, max_outputs=max_outputs, max_live_events=50,
                          max_live_bytes=20_000)
    make = {
        "out": lambda n: stream("o" * (n % 50)), "err": lambda n: stream("é" * (n % 50), "stderr"),
        "big": lambda n: stream("B" * n * 3),
        "disp": lambda n: display({"text/plain": "d" * (n % 80)}, display_id=f"id{n % 3}"),
        "bigdisp": lambda n: display({"text/plain": "D" * n * 3}, display_id=f"id{n % 3}"),
        "upd": lambda n: display({"text/plain": "u" * (n % 80)}, display_id=f"id{n % 3}",
                                 kind="update_display_data"),
        "bigupd": lambda n: display({"text/plain": "U" * n}, display_id=f"id{n % 3}",
                                    kind="update_display_data"),
        "foreign": lambda n: display({"text/plain": "f" * n}, display_id="nowhere",
                                     kind="update_display_data"),
        "clear": lambda n: msg("clear_output", {"wait": False}),
        "clearwait": lambda n: msg("clear_output", {"wait": True}),
        "error": lambda n: error("E", "v" * (n % 100), ["t" * (n % 70)] * 3),
        "bigerror": lambda n: error("E" * 2000, "v" * n * 5, ["T" * n] * 250),
    }
    for kind, n in ops:
        asm.feed(make[kind](n))
        invariants(asm)
    asm.finish()
    invariants(asm)
