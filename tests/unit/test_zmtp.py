"""sandbox._zmtp: the capped ZMTP reader from hand-made byte streams, and the real
thing against libzmq (pyzmq ROUTER and PUB sockets on ipc, no container)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path

import pytest
import zmq

from sandbox import _zmtp as z
from sandbox._kernel import Route

PEER_READY = z.GREETING + z._frame_header(z.COMMAND, 25) + b"\x05READY" + z._property(
    b"Socket-Type", b"PUB")


def reader(**limits: int) -> z.Reader:
    r = z.Reader(z.Limits(**limits), "SUB")
    assert r.feed(PEER_READY) and r.stage == "frames"
    return r


def drain(r: z.Reader) -> list[object]:
    out = []
    while (item := r.take()) is not None:
        out.append(item)
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_messages_come_out_whole_whatever_the_chunking(chunk: int) -> None:
    r = z.Reader(z.Limits(), "SUB")
    stream = PEER_READY + z.encode([b"topic", b"a" * 300, b""]) + z.encode([b"x"])
    for i in range(0, len(stream), chunk):
        assert r.feed(stream[i:i + chunk])
    assert drain(r) == [[b"topic", b"a" * 300, b""], [b"x"]]
    assert r.queued == 0


@pytest.mark.parametrize("chunk", [5, 100, 1 << 20])
def test_a_message_over_the_byte_cap_is_skipped_unkept_and_the_next_one_arrives(
        chunk: int) -> None:
    r = reader(max_bytes=1000)
    stream = z.encode([b"h", b"b" * 600, b"c" * 600, b"d" * 5000]) + z.encode([b"next"])
    for i in range(0, len(stream), chunk):
        assert r.feed(stream[i:i + chunk])
        assert len(r.buf) <= max(chunk, 1000) + 16  # never more than a chunk or the cap
    items = drain(r)
    assert len(items) == 2
    dropped = items[0]
    assert isinstance(dropped, z.Dropped) and dropped.frames == 4
    assert dropped.size == 1 + 600 + 600 + 5000 and "1000 bytes" in dropped.reason
    assert items[1] == [b"next"]


def test_a_message_over_the_frame_cap_ends_the_connection_after_the_cap() -> None:
    r = reader(max_frames=256)
    bomb = z.encode([b""] * 100_000)
    assert not r.feed(bomb)
    assert r.error is not None and "256 frames" in r.error
    assert drain(r) == []


def test_reserved_flags_and_oversized_commands_end_the_connection() -> None:
    r = reader()
    assert not r.feed(bytes([0x08, 0]))
    r = reader()
    assert not r.feed(bytes([z.COMMAND | z.LONG]) + struct.pack(">Q", 1 << 40))
    assert r.error is not None and "command" in r.error


def test_a_peer_of_the_wrong_socket_type_or_mechanism_is_refused() -> None:
    r = z.Reader(z.Limits(), "SUB")
    wrong = z.GREETING + z._frame_header(z.COMMAND, 28) + b"\x05READY" + z._property(
        b"Socket-Type", b"ROUTER")[:-6] + b"ROUTER"
    assert not r.feed(wrong)
    r = z.Reader(z.Limits(), "SUB")
    assert not r.feed(z.GREETING[:12] + b"CURVE".ljust(20, b"\x00") + z.GREETING[32:])


def test_queued_bytes_are_counted_until_taken() -> None:
    r = reader()
    r.feed(z.encode([b"a" * 100]) + z.encode([b"b" * 50]))
    assert r.queued == 150
    r.take()
    assert r.queued == 50


def test_a_planted_symlink_is_never_connected(tmp_path: Path) -> None:
    target = tmp_path / "host.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(target))
    listener.listen()
    listener.setblocking(False)
    (tmp_path / "k1-2").symlink_to(target)
    with pytest.raises(z.ZmtpError, match="not a socket"):
        z.open_unix(tmp_path / "k1-2", None)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    # A real socket whose peer fails the check is closed again.
    with pytest.raises(z.ZmtpError, match="not the sandbox"):
        z.open_unix(target, lambda pid, uid, gid: f"pid {pid} is the host")
    conn, _ = listener.accept()
    assert conn.recv(1) == b""  # closed by the host at once
    conn.close()
    listener.close()


async def test_against_libzmq_sub_and_dealer(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    try:
        pub.bind(f"ipc://{tmp_path}/pub")
        router.bind(f"ipc://{tmp_path}/router")
        mine = os.getpid()
        sub = await z.Connection.open(tmp_path / "pub", "SUB", z.Limits(),
                                      lambda pid, uid, gid: None if pid == mine else "other")
        dealer = await z.Connection.open(tmp_path / "router", "DEALER", z.Limits())
        dealer.send([b"<IDS|MSG>", b"hello"])  # before the greetings: kept until then
        loop = asyncio.get_running_loop()
        ident, *rest = await loop.run_in_executor(None, router.recv_multipart)
        assert rest == [b"<IDS|MSG>", b"hello"]
        router.send_multipart([ident, b"reply", b"x" * 100_000])
        assert await asyncio.wait_for(dealer.recv(), 5) == [b"reply", b"x" * 100_000]
        got = None
        for _ in range(100):  # a subscription lands asynchronously: publish until heard
            pub.send_multipart([b"topic", b"out"])
            try:
                got = await asyncio.wait_for(sub.recv(), 0.05)
                break
            except TimeoutError:
                continue
        assert got == [b"topic", b"out"]
        sub.close()
        dealer.close()
    finally:
        pub.close(linger=0)
        router.close(linger=0)
        ctx.term()


async def test_a_route_holds_back_its_pump_past_the_budget() -> None:
    route = Route(budget=1000)
    await route.put(("iopub", {"n": 1}), 800)
    second = asyncio.create_task(route.put(("iopub", {"n": 2}), 800))
    await asyncio.sleep(0.01)
    assert not second.done() and route.size == 800  # waits: 1600 > 1000
    assert (await route.get())[1] == {"n": 1}
    await asyncio.wait_for(second, 1)
    assert route.size == 800
    third = asyncio.create_task(route.put(("iopub", {"n": 3}), 10_000))
    await asyncio.sleep(0.01)
    route.close()  # a released route lets a waiting pump go, and keeps nothing
    await asyncio.wait_for(third, 1)
    assert route.size == 0 and route.empty()


def test_a_message_with_an_oversized_jupyter_header_is_skipped_unkept() -> None:
    r = reader(max_header_bytes=100)
    big = z.encode([b"topic", z.DELIMITER, b"sig", b"h" * 5000, b"{}", b"{}", b"{}"])
    fine = z.encode([b"topic", z.DELIMITER, b"sig", b"h" * 100, b"p" * 100, b"{}", b"c" * 5000])
    assert r.feed(big + fine)
    items = drain(r)
    assert isinstance(items[0], z.Dropped) and "header of 5000 bytes" in items[0].reason
    assert items[1] == [b"topic", z.DELIMITER, b"sig", b"h" * 100, b"p" * 100, b"{}",
                        b"c" * 5000]  # the content is not a header: no cap but the total
