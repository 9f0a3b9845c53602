"""*Before* in the tuning suite: the host's kernel transport as it was at commit 164c099
(libzmq through pyzmq and jupyter_client's channels), as a ``KernelConnection``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient  # type: ignore[attr-defined]

import sandbox._session as session_module
from sandbox._exceptions import DeadlineExceeded, SandboxError
from sandbox._kernel import KernelConnection, KernelEndpoint, Route, deserialize
from sandbox._tasks import cancel_and_wait

RECV_WATCH_S = 0.5  # as at 164c099


async def _recv_watched(sock: Any) -> list[bytes]:
    """*Before*, verbatim from 164c099: ``sock.recv_multipart()``, re-armed whenever
    ZMQ holds a message the future was not woken for (ZMQ's file descriptor is
    edge-triggered, and a send on the same DEALER socket can consume the edge of a
    reply that has just arrived)."""
    fut = sock.recv_multipart()
    try:
        while True:
            done, _ = await asyncio.wait({fut}, timeout=RECV_WATCH_S)
            if done:
                result: list[bytes] = fut.result()
                return result
            if sock.closed or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                continue
            if not fut.cancel():  # it completed meanwhile: keep its message
                result = fut.result()
                return result
            fut = sock.recv_multipart()
    finally:
        if not fut.done():
            fut.cancel()


class LibzmqConnection(KernelConnection):
    """*Before*: the host's kernel transport as it was at 164c099, libzmq through pyzmq
    and jupyter_client's ``AsyncKernelClient`` channels (shell, IOPub and control),
    read by the old pump (``_recv_watched``, then ``deserialize``).

    What is the library's here is only what both sides share: the handshake
    (``wait_iopub``), the routing (``deliver``, into the same ``Route`` objects) and
    ``deserialize`` (run with its header cap off, as 164c099's had none: the same
    signature check and JSON parsing). Only the transport differs."""

    def __init__(self, endpoint: KernelEndpoint, *, max_message_bytes: int,
                 container_id: str | None = None) -> None:
        super().__init__(endpoint, max_message_bytes=max_message_bytes,
                         container_id=container_id)
        self.context = zmq.asyncio.Context()
        # ZMQ drops (unread) any frame larger than this: libzmq's only receive cap.
        self.context.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.client = AsyncKernelClient(context=self.context)
        self.client.load_connection_info(endpoint.host_info)  # type: ignore[arg-type]

    async def connect(self, run_dir: Path, deadline: float, alive: Any = None) -> None:
        self._run_dir = run_dir
        paths = self.endpoint.socket_paths(run_dir)
        next_check = time.monotonic() + 0.5
        while not all(p.exists() for p in paths):
            now = time.monotonic()
            if now >= deadline:
                raise DeadlineExceeded("the kernel did not bind its sockets before the deadline")
            if alive is not None and now >= next_check:
                next_check = now + 0.5
                if not await alive():
                    raise SandboxError("the kernel exited while starting")
            await asyncio.sleep(0.005)
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        for channel in ("iopub", "shell", "control"):
            self._pumps[channel] = asyncio.create_task(self._pump(channel))
        await self.wait_iopub(deadline)

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.client.session.msg(msg_type, content)
        self.client.shell_channel.send(msg)
        msg_id: str = msg["header"]["msg_id"]
        return msg_id

    def execute(self, code: str) -> tuple[str, Route]:
        msg = self.client.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
        })
        msg_id: str = msg["header"]["msg_id"]
        queue = self.route(msg_id)
        self.client.shell_channel.send(msg)
        return msg_id, queue

    async def reconnect_iopub(self, timeout: float = 5.0) -> None:
        await cancel_and_wait(self._pumps.pop("iopub", None))
        old = self.client._iopub_channel  # jupyter_client creates the channel lazily
        self.client._iopub_channel = None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        self.client.iopub_channel.start()
        self._pumps["iopub"] = asyncio.create_task(self._pump("iopub"))
        await self.wait_iopub(time.monotonic() + timeout)

    async def _pump(self, channel: str) -> None:
        sock = {"iopub": self.client.iopub_channel, "shell": self.client.shell_channel,
                "control": self.client.control_channel}[channel].socket
        session = self.client.session
        while True:
            try:
                msg = deserialize(session, await _recv_watched(sock),
                                  max_header_bytes=sys.maxsize)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK) or self.context.closed:
                    return  # the socket or the context is closed
                self.rejected += 1
                await asyncio.sleep(0.01)
                continue
            except Exception:  # bad signature, bad JSON, bad shape
                self.rejected += 1
                continue
            self.deliver(channel, msg)

    async def close(self) -> None:
        self._closing = True
        pumps, self._pumps = list(self._pumps.values()), {}
        await cancel_and_wait(*pumps)
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        self.context.destroy(linger=0)


@contextlib.contextmanager
def transport(cls: type[KernelConnection]) -> Iterator[None]:
    """Sessions started meanwhile talk to their kernel through *cls* (the session
    module builds its ``KernelConnection`` by that name, in ``_connect``)."""
    saved = session_module.KernelConnection  # type: ignore[attr-defined]
    session_module.KernelConnection = cls  # type: ignore[attr-defined]
    try:
        yield
    finally:
        session_module.KernelConnection = saved  # type: ignore[attr-defined]
