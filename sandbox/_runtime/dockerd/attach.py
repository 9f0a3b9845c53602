"""A command's attach stream: docker's multiplexed frames, read with every size bounded.

The socket is the one ``exec_start(socket=True)`` hands back. A plain Unix or TCP socket
is read on the event loop, so no worker thread ever waits on what a box does with its
command's pipes; a TLS or SSH one (which asyncio cannot wait on) is read by a worker of
a small pool of the caller's, never past the deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
import time
from typing import Any

from sandbox._compat import raw_socket
from sandbox._exceptions import FileOperationError

MAX_EXEC_STDERR = 64 * 1024
MAX_EXEC_FRAME = 1 << 20  # dockerd frames what it reads from the pipe: 32 KiB at most
_RECV = 1 << 16
_FRAME_HEADER = struct.Struct(">BxxxL")


class ExecStream:
    """Docker's multiplexed attach stream (an 8-byte header per frame), parsed as it
    arrives with every dimension bounded: stdout (then ``truncated``), stderr (the rest is
    dropped), the size of one frame and the number of frames (a box that writes one byte
    at a time makes a frame per byte; parsing each costs the host)."""

    def __init__(self, max_stdout: int, max_stderr: int = MAX_EXEC_STDERR) -> None:
        self.max_stdout, self.max_stderr = max_stdout, max_stderr
        self.max_frames = 1024 + (max_stdout + max_stderr) // 1024
        self.frames = 0
        self._out, self._err, self._buf = bytearray(), bytearray(), bytearray()
        self.truncated = False

    @property
    def done(self) -> bool:
        return self.truncated

    @property
    def stdout(self) -> bytes:
        return bytes(self._out)

    @property
    def stderr(self) -> bytes:
        return bytes(self._err)

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        pos, end = 0, len(self._buf)
        with memoryview(self._buf) as view:
            while end - pos >= 8 and not self.done:
                kind, size = _FRAME_HEADER.unpack_from(view, pos)
                if size > MAX_EXEC_FRAME:
                    raise FileOperationError(f"the sandbox's output stream is malformed (a "
                                             f"frame of {size} bytes)", "bad_output")
                if end - pos - 8 < size:
                    break
                self._frame(kind, view[pos + 8 : pos + 8 + size])
                pos += 8 + size
        del self._buf[:pos]

    def _frame(self, kind: int, payload: memoryview) -> None:
        self.frames += 1
        if self.frames > self.max_frames:
            raise FileOperationError(f"the sandbox's output came in more than "
                                     f"{self.max_frames} pieces; refused", "bad_output")
        if kind == 1:
            room = self.max_stdout - len(self._out)
            if len(payload) > room:
                self._out += payload[: max(0, room)]
                self.truncated = True
                return
            self._out += payload
        else:  # 2: stderr; 3: the engine's own error text
            self._err += payload[: max(0, self.max_stderr - len(self._err))]


def _loop_capable(raw: Any) -> bool:
    """A plain Unix or TCP socket, which the event loop can wait on (not TLS, not SSH)."""
    return type(raw) is socket.socket


def close_exec_socket(sock: Any) -> None:
    """Close the socket and docker-py's wrapper around it (either may be gone)."""
    raw = raw_socket(sock)
    for obj in (raw, sock):
        with contextlib.suppress(OSError, AttributeError, EOFError):
            obj.close()


async def _pump_on_loop(raw: socket.socket, stdin: bytes | None, stream: ExecStream,
                        deadline: float) -> None:
    loop = asyncio.get_running_loop()
    raw.setblocking(False)
    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
        if stdin is not None:
            try:
                await loop.sock_sendall(raw, stdin)
                raw.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command stopped reading (too large, say): its answer says why
        while not stream.done:
            chunk = await loop.sock_recv(raw, _RECV)
            if not chunk:
                return
            stream.feed(chunk)


def _pump_blocking(raw: Any, stdin: bytes | None, stream: ExecStream, deadline: float) -> None:
    """The same, blocking (TLS/SSH sockets): each call waits no longer than the deadline."""

    def until_deadline() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    if stdin is not None:
        view = memoryview(stdin)
        try:
            while view:
                raw.settimeout(until_deadline())
                view = view[raw.send(view[:_RECV]) :]
            raw.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
    while not stream.done:
        raw.settimeout(until_deadline())
        chunk = raw.recv(_RECV)
        if not chunk:
            return
        stream.feed(chunk)


async def pump(sock: Any, stdin: bytes | None, stream: ExecStream, deadline: float,
               io_pool: concurrent.futures.ThreadPoolExecutor) -> None:
    """Feed *stdin* to the command and its output to *stream* until it ends, *stream* is
    full, or the deadline (monotonic) passes (TimeoutError)."""
    raw = raw_socket(sock)
    if _loop_capable(raw):
        await _pump_on_loop(raw, stdin, stream, deadline)
        return
    # TLS (SSLSocket) or SSH (a paramiko channel): leaving early (cancelled) shuts the
    # socket so that the worker is released at once.
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(io_pool, _pump_blocking, raw, stdin, stream, deadline)
    try:
        await work
    except BaseException:
        with contextlib.suppress(OSError, AttributeError, EOFError):
            raw.shutdown(socket.SHUT_RDWR)
        raise
