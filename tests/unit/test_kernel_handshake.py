"""KernelConnection.wait_iopub, the start handshake, against a scripted kernel: the
routing logic alone (no ZMQ traffic; the real kernel does it in tests/engine).

(The host reads kernel sockets with asyncio protocols now, sandbox._zmtp: the missed
ZMQ edge that the re-armed recv worked around cannot happen there.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from sandbox._exceptions import DeadlineExceeded
from sandbox._kernel import KernelConnection, KernelEndpoint


class SlowKernel:
    """Answers every kernel_info (reply on shell, status on IOPub) *delay* seconds late."""

    def __init__(self, conn: KernelConnection, delay: float, iopub: bool = True) -> None:
        self.conn, self.delay, self.iopub = conn, delay, iopub
        self.ids = itertools.count(1)
        self.sent: list[float] = []

    def kernel_info(self) -> str:
        msg_id = f"ki-{next(self.ids)}"
        self.sent.append(time.monotonic())
        loop = asyncio.get_running_loop()
        reply = {"parent_header": {"msg_id": msg_id}, "content": {"status": "ok", "n": msg_id}}
        loop.call_later(self.delay, self.conn.post, msg_id, "shell", reply)
        if self.iopub:
            loop.call_later(self.delay, self.conn.post, msg_id, "iopub",
                            {"parent_header": {"msg_id": msg_id}})
        return msg_id


@pytest.fixture
async def conn() -> Any:
    endpoint = KernelEndpoint(1, "kernel-1.json", {"transport": "ipc", "ip": "/nonexistent/k1",
                                                    "key": "00", "signature_scheme": "hmac-sha256",
                                                    "shell_port": 1, "iopub_port": 2,
                                                    "stdin_port": 3, "control_port": 4,
                                                    "hb_port": 5})
    connection = KernelConnection(endpoint, max_message_bytes=1 << 20)
    yield connection
    await connection.close()


async def test_a_kernel_slower_than_the_resend_interval_is_still_heard(conn: Any) -> None:
    # Each answer comes 0.6 s after its request, later than the first resend (0.25 s):
    # the handshake takes the answer to an earlier request instead of waiting forever
    # for one to the newest.
    kernel = SlowKernel(conn, delay=0.6)
    conn.kernel_info_request = kernel.kernel_info
    t0 = time.monotonic()
    await conn.wait_iopub(deadline=t0 + 5)
    assert time.monotonic() - t0 < 1.5
    assert conn.kernel_info["n"] == "ki-1"
    assert conn._routes == {}  # every request's route released
    # Resends back off (0.25 s, then 0.5 s): not a flood on a kernel already behind.
    assert len(kernel.sent) <= 3


async def test_no_iopub_at_all_runs_into_the_deadline_and_says_what_was_seen(conn: Any) -> None:
    conn.kernel_info_request = SlowKernel(conn, delay=0.01, iopub=False).kernel_info
    with pytest.raises(DeadlineExceeded, match="reply seen, IOPub not seen"):
        await conn.wait_iopub(deadline=time.monotonic() + 1.0)
    assert conn._routes == {}

