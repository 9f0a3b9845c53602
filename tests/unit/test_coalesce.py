"""The response's writes joined into one send (api/server/coalesce.py): in order, bounded,
never held past the loop's next turn or the response's end, flushed by close and dropped
by abort. Every HTTP test in tests/api and tests/security runs through it on real
sockets."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from typing import Any

import uvicorn

from api.server import connections
from api.server.coalesce import HOLD_MAX, CoalescingTransport


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = self.aborted = False
        self.buffered = 0

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return self.buffered


async def test_writes_of_one_step_go_out_as_one_in_order() -> None:
    inner = Recording()
    t = CoalescingTransport(inner, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")
    t.write(b'{"status": "ok"}')
    assert inner.sent == []
    await asyncio.sleep(0)  # the loop's next turn
    assert inner.sent == [b'HTTP/1.1 200 OK\r\n\r\n{"status": "ok"}']
    t.write(b"next")
    await asyncio.sleep(0)
    assert inner.sent[-1] == b"next" and t.get_write_buffer_size() == 0


async def test_asking_the_buffer_size_sends_what_is_held_first() -> None:
    """The guard asks before it closes (abort if the client reads nothing): a 408 just
    written must go out, not count as unread and be dropped."""
    inner = Recording()
    t = CoalescingTransport(inner, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    inner.buffered = 0
    assert t.get_write_buffer_size() == 0
    assert inner.sent == [b"HTTP/1.1 408 Request Timeout\r\n\r\n"]


async def test_a_large_write_is_never_held_and_keeps_the_order() -> None:
    inner = Recording()
    t = CoalescingTransport(inner, asyncio.get_running_loop())
    t.write(b"head")
    big = b"x" * HOLD_MAX
    t.write(big)
    assert inner.sent == [b"head" + big]  # at once, the held head first
    t.write(b"tail")
    await asyncio.sleep(0)
    assert inner.sent == [b"head" + big, b"tail"]


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    inner = Recording()
    t = CoalescingTransport(inner, loop)
    t.write(b"503 canned")
    t.close()
    assert inner.sent == [b"503 canned"] and inner.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert inner.sent == [b"503 canned"]

    inner = Recording()
    t = CoalescingTransport(inner, loop)
    t.write(b"never read")
    t.abort()
    await asyncio.sleep(0)
    assert inner.sent == [] and inner.aborted and t.get_write_buffer_size() == 0


def test_a_finished_answer_leaves_before_the_work_after_it() -> None:
    """What the app and uvicorn still do in the step that completed a response (the
    access-log line, the keep-alive timer) runs after the answer is sent, not before:
    held writes go out when the response is complete, not only at the loop's next turn.
    The app here holds its step until the client has read the answer (5 s at most)."""
    guard = connections.ConnectionGuard(connections.Limits(
        max_connections=8, max_per_client=8, header_timeout_s=5, body_timeout_s=5,
        send_timeout_s=5))
    client_has_it = threading.Event()
    seen_while_the_step_ran: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        # the work after the answer, in the same step of the loop
        seen_while_the_step_ran.append(client_has_it.wait(timeout=5))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, http=connections.protocol_class(guard),
        loop="asyncio", lifespan="off", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        client_has_it.set()
        conn.close()
        while not seen_while_the_step_ran:
            assert time.monotonic() < deadline + 10
            time.sleep(0.01)
        assert seen_while_the_step_ran == [True], "the answer waited for the work after it"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
