"""The host's side of a kernel's ZMQ sockets, read with caps libzmq does not have.

Why not pyzmq here: libzmq's only receive cap (``ZMQ_MAXMSGSIZE``) is per *frame*,
a multipart message is buffered whole before the reader sees its first frame, and
the high-water mark counts messages, not bytes or frames. A box can therefore send
one message of millions of empty frames (the host then builds millions of Python
objects on its event loop) or of many large frames (hundreds of MB held before any
check), and libzmq reconnects on its own to whatever the box put under the socket's
name. This module speaks just enough ZMTP 3.0 (RFC 23, NULL mechanism) for the three
socket pairs the host uses — DEALER→ROUTER (shell, control) and SUB→PUB (IOPub) — and
checks every frame header *before* reading its body:

- at most ``max_frames`` frames and ``max_bytes`` bytes per message; a message over
  the byte cap is skipped without being kept (its parts are counted and thrown away
  as they arrive), a message over the frame cap ends the connection (skipping it
  would be unbounded work), and either is reported to the reader as a :class:`Dropped`;
- at most ``budget`` bytes of complete messages wait for the reader; past it the
  socket is not read any more (back-pressure to the kernel, whose PUB socket then
  drops on its own side);
- the socket is connected without following a link the box planted, and the peer
  must pass ``check_peer`` (its SO_PEERCRED), on every connect.

Everything the box can do costs the host work proportional to the bytes it keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import cast

from sandbox._zmtp_wire import (
    COMMAND,
    DELIMITER,
    GREETING,
    LONG,
    MAX_COMMAND,
    MORE,
    PEERS,
    Dropped,
    Limits,
    Reader,
    ZmtpError,
    _frame_header,
    _property,
    encode,
    parse_ready,
    ready_command,
)

__all__ = ["COMMAND", "DELIMITER", "GREETING", "LONG", "MAX_COMMAND", "MORE", "PEERS",
           "Connection", "Dropped", "Limits", "Reader", "ZmtpError", "_frame_header",
           "_property", "encode", "open_unix", "parse_ready", "ready_command"]


def open_unix(path: Path, check_peer: Callable[[int, int, int], str | None] | None
              ) -> socket.socket:
    """A connected Unix socket to *path*, never through a link the box planted.

    The name must be a socket (``lstat``: a symlink is refused), and because the box can
    swap the name between that check and ``connect``, the peer that answered must pass
    *check_peer* (pid, uid, gid from SO_PEERCRED; it returns why not, or None).
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ZmtpError(f"{path.name}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ZmtpError(f"{path.name} is not a socket (planted by the sandbox?)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(str(path))
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        refused = check_peer(pid, uid, gid) if check_peer is not None else None
        if refused:
            raise ZmtpError(f"{path.name}: the peer is not the sandbox ({refused})")
    except BaseException:
        sock.close()
        raise
    return sock


class Connection(asyncio.Protocol):
    """One ZMTP connection over a Unix socket: ``recv()`` gives capped messages."""

    def __init__(self, socket_type: str, limits: Limits) -> None:
        self.socket_type = socket_type
        self.reader = Reader(limits, socket_type)
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self._pending: list[bytes] = []  # messages sent before the greetings were exchanged
        self.host_ended = False  # the host ended it (a cap or the protocol broken)

    @classmethod
    async def open(cls, path: Path, socket_type: str, limits: Limits,
                   check_peer: Callable[[int, int, int], str | None] | None = None,
                   ) -> Connection:
        sock = open_unix(path, check_peer)
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: cls(socket_type, limits), sock=sock)
        except BaseException:
            sock.close()
            raise
        return protocol

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's
        # is not): what is used of it is the Transport interface.
        self.transport = cast(asyncio.Transport, transport)
        # The greeting alone first: libzmq drops what comes in the same read as a
        # greeting (seen: a subscription sent with it never took).
        self.transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        greeted = self.reader.stage != "greeting"
        if not self.reader.feed(data):
            self._fail(self.reader.error or "protocol error")
            return
        if not greeted and self.reader.stage != "greeting":
            assert self.transport is not None
            out = ready_command(self.socket_type)
            if self.socket_type == "SUB":
                out += encode([b"\x01"])  # subscribe to every topic (ZMTP 3.0)
            self.transport.write(out + b"".join(self._pending))
            self._pending.clear()
        if self.reader.queued > self.reader.limits.budget and not self._paused:
            self._paused = True  # back-pressure: the kernel's side of the socket fills
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "the kernel closed the connection")
        self._wake()

    def _fail(self, reason: str) -> None:
        self.host_ended = True
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- for the pump ----------------------------------------------------------------
    async def recv(self) -> list[bytes] | Dropped:
        """The next message (or what was dropped); ZmtpError once the connection ended."""
        while True:
            item = self.reader.take()
            if item is not None:
                if self._paused and self.reader.queued <= self.reader.limits.budget // 2:
                    self._paused = False
                    if self.transport is not None and not self.transport.is_closing():
                        self.transport.resume_reading()
                return item
            if self.closed.done():
                raise ZmtpError(self.closed.result())
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def send(self, frames: list[bytes]) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ZmtpError("the connection to the kernel is closed")
        if self.reader.stage == "greeting":
            if len(self._pending) >= 64:
                raise ZmtpError("the kernel has not answered the ZMTP greeting")
            self._pending.append(encode(frames))
            return
        self.transport.write(encode(frames))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if not self.closed.done():
            self.closed.set_result("closed by the host")
