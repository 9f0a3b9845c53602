"""What a box sends back through a file operation is bounded and untrusted (pure logic):
the exec stream's frames, a listing's lines, the helper's error; and a session's file
operations are bounded in number and in waiting time."""

from __future__ import annotations

import asyncio
import json
import struct
import time

import pytest

from sandbox import FileOperationError
from sandbox._files import MAX_LIST_LINE, FileOps, FileSlots, clean_text, parse_listing
from sandbox._runtime.dockerd.attach import MAX_EXEC_FRAME, ExecStream


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


# -- the exec stream -------------------------------------------------------------------
def test_the_stream_is_demultiplexed_across_chunk_boundaries() -> None:
    wire = frame(1, b"hello ") + frame(2, b"oops") + frame(1, b"world")
    stream = ExecStream(max_stdout=100)
    for i in range(len(wire)):  # one byte at a time: headers and payloads split anywhere
        stream.feed(wire[i : i + 1])
    assert (stream.stdout, stream.stderr, stream.truncated) == (b"hello world", b"oops", False)


def test_stdout_is_cut_exactly_at_its_cap_and_says_so() -> None:
    stream = ExecStream(max_stdout=10)
    stream.feed(frame(1, b"x" * 6) + frame(1, b"y" * 6) + frame(1, b"z" * 6))
    assert stream.stdout == b"x" * 6 + b"y" * 4
    assert stream.truncated and stream.done


def test_stderr_is_capped_and_the_rest_dropped() -> None:
    stream = ExecStream(max_stdout=10, max_stderr=5)
    stream.feed(frame(2, b"a" * 4) + frame(2, b"b" * 4) + frame(3, b"c" * 4))
    assert stream.stderr == b"aaaab"
    assert not stream.truncated


def test_a_frame_larger_than_the_engine_ever_sends_is_refused() -> None:
    stream = ExecStream(max_stdout=10 * MAX_EXEC_FRAME)
    with pytest.raises(FileOperationError) as err:
        stream.feed(struct.pack(">BxxxL", 1, MAX_EXEC_FRAME + 1))
    assert err.value.code == "bad_output"


def test_a_flood_of_tiny_frames_is_cut_after_a_bounded_number() -> None:
    stream = ExecStream(max_stdout=1024 * 1024)
    one_byte = frame(1, b"x") * 1000
    with pytest.raises(FileOperationError) as err:
        for _ in range(10):
            stream.feed(one_byte)
    assert err.value.code == "bad_output"
    assert stream.frames == stream.max_frames + 1
    assert stream.max_frames < 4096  # ~1 frame per KiB of what may come back, plus 1024


def test_parsing_a_stream_of_maximal_size_is_cheap() -> None:
    payload = b"x" * 32 * 1024  # dockerd's frame size
    wire = frame(1, payload) * 64  # 2 MiB
    stream = ExecStream(max_stdout=len(payload) * 64)
    t0 = time.perf_counter()
    for i in range(0, len(wire), 1 << 16):
        stream.feed(wire[i : i + (1 << 16)])
    assert len(stream.stdout) == len(payload) * 64
    assert time.perf_counter() - t0 < 0.5


# -- a listing -------------------------------------------------------------------------
def entry(**kw: object) -> bytes:
    item: dict[str, object] = {"path": "a.txt", "size": 3, "modified": 1.5, "type": "file"}
    item.update(kw)
    return json.dumps(item).encode()


def test_a_listing_keeps_only_well_formed_entries() -> None:
    lines = [
        entry(),
        entry(path="d", type="dir"),
        b'{"path": "nan", "size": 1, "modified": NaN}',  # would fail the JSON answer
        b'{"path": "inf", "size": 1, "modified": Infinity}',
        entry(size=-1), entry(size=True), entry(size=1.5), entry(path=7),
        b"[" * 100_000,  # nesting deep enough to raise RecursionError
        b'{"path": "big", "size": 1' + b"0" * 5000 + b', "modified": 1}',  # int too long
        b"x" * (MAX_LIST_LINE + 1),
        b"\xff\xfe not json",
        b'{"truncated": true}',
        b"[1, 2]",
    ]
    found, skipped = parse_listing(b"\n".join(lines))
    assert [(f.path, f.is_dir) for f in found] == [("a.txt", False), ("d", True)]
    assert skipped == len(lines) - 2


def test_a_name_that_is_not_utf8_is_listed_readably() -> None:
    # files.py prints a non-UTF-8 file name as a lone surrogate ("\udcff"), which the
    # JSON encoder of the answer refuses (a 500): it is shown with U+FFFD instead.
    found, _ = parse_listing(json.dumps({"path": "bad\udcff.txt", "size": 1,
                                         "modified": 1.0}).encode())
    assert found[0].path == "bad\ufffd.txt"
    found[0].path.encode()


def test_a_listing_keeps_at_most_max_entries() -> None:
    raw = b"\n".join(entry(path=f"f{i}") for i in range(20))
    found, skipped = parse_listing(raw, max_entries=5)
    assert len(found) == 5 and skipped == 15


# -- the helper's error ----------------------------------------------------------------
def test_the_box_cannot_choose_the_hosts_error_codes() -> None:
    # "timeout", "busy" and "stuck" are the host's to give (504/429/409); so is anything
    # not in files.py's own list.
    for code in ("timeout", "busy", "stuck", "../x", "a" * 1000):
        _, kind = FileOps._describe(["read", "f"], 2, json.dumps(
            {"error": code, "message": "m"}).encode())
        assert kind == "failed"
    _, kind = FileOps._describe(["read", "f"], 2, b'{"error": "not_found", "message": "m"}')
    assert kind == "not_found"


def test_the_helpers_error_text_is_bounded_and_encodable() -> None:
    message, kind = FileOps._describe(["read", "f"], 2, b"[" * 60_000)
    assert kind == "failed" and len(message) < 400
    message, _ = FileOps._describe(["read", "f"], 2, json.dumps(
        {"error": "not_found", "message": "\udcff" + "m" * 10_000}).encode())
    message.encode()
    assert len(message) < 400
    assert clean_text("ok") == "ok"


# -- a session's turns -----------------------------------------------------------------
async def test_turns_run_at_most_n_queue_at_most_m_and_refuse_the_rest() -> None:
    slots = FileSlots(running=2, waiting=1)
    release = asyncio.Event()
    entered: list[int] = []

    async def op(i: int) -> str:
        try:
            async with slots.turn(f"op {i}", timeout_s=30):
                entered.append(i)
                await release.wait()
            return "ok"
        except FileOperationError as exc:
            return exc.code

    tasks = [asyncio.create_task(op(i)) for i in range(5)]
    busy = list(await asyncio.gather(tasks[3], tasks[4]))
    assert busy == ["busy", "busy"]
    assert entered == [0, 1] and slots.waiting == 1
    release.set()
    assert await asyncio.gather(*tasks[:3]) == ["ok", "ok", "ok"]
    assert entered == [0, 1, 2] and slots.waiting == 0


async def test_a_turn_not_had_within_the_deadline_is_a_timeout() -> None:
    slots = FileSlots(running=1, waiting=4)
    hold, held = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with slots.turn("holder", timeout_s=30):
            held.set()
            await hold.wait()

    task = asyncio.create_task(holder())
    await held.wait()  # the holder has the only turn
    t0 = time.monotonic()
    with pytest.raises(FileOperationError) as err:
        async with slots.turn("waiter", timeout_s=0.2):
            pass
    assert err.value.code == "timeout"
    assert 0.15 < time.monotonic() - t0 < 2
    assert slots.waiting == 0
    hold.set()
    await task
    async with slots.turn("after", timeout_s=1):  # the turn came back
        pass
