"""Talking to one container: its init (start/kill/watch kernels) and its kernel (ZMQ).

Two channels, both through the session's run directory (bind-mounted at
``/run/kernel``), neither on any network interface:

- :class:`InitClient`: JSON requests to ``agentbox-init`` over ``init.sock``;
  the death watch is a request that is answered when the kernel exits. The
  sandbox can replace ``init.sock`` with a server of its own, so every answer
  must carry an HMAC over the request's nonce made with the container's init
  key (``init.key``, read and deleted by init before any sandboxed code runs);
  an answer without it is treated as no answer at all.
- :class:`KernelConnection`: jupyter_client's async client over ZMQ ``ipc``
  sockets ``k<generation>-<n>``; two pump tasks read IOPub and shell replies and
  route each message to the execution it answers, by parent ``msg_id``; a
  message that answers no live request is dropped (and counted), so output can
  never be attributed to the wrong execution.

Everything read here comes from inside the sandbox and is treated as untrusted:
sizes are bounded, JSON is type-checked, every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.session import Session

from sandbox._exceptions import DeadlineExceeded, SandboxError
from sandbox._runtime.base import CONTAINER_RUN_DIR

INIT_SOCKET = "init.sock"
INIT_KEY_FILE = "init.key"
MAX_INIT_REPLY = 64 * 1024
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


class InitUnavailable(SandboxError):
    """agentbox-init did not answer (container gone, or the sandbox broke it)."""


@dataclass(frozen=True)
class KernelEndpoint:
    """One kernel generation's connection: fresh HMAC key, fresh socket names."""

    generation: int
    connection_file: str  # name inside the run dir, e.g. "kernel-3.json"
    host_info: dict[str, Any]  # for jupyter_client on the host (host socket paths)

    def socket_paths(self, run_dir: Path) -> list[Path]:
        return [run_dir / f"k{self.generation}-{port}" for port in PORTS.values()]


def _write_for_kernel(path: Path, text: str, uid: int, gid: int, mode: int) -> None:
    """Write a file the kernel (uid:gid) can read, into a run dir it can write.

    The sandbox may have planted a symlink or a FIFO under this name: whatever is there
    is removed (unlink never follows links), a new regular file is created exclusively
    and without blocking, and the open file is chowned, never a path.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK,
                 mode)
    with os.fdopen(fd, "w") as fh:
        if os.geteuid() == 0:
            os.fchown(fh.fileno(), uid, gid)
        fh.write(text)


def write_connection_file(path: Path, info: dict[str, Any], uid: int, gid: int) -> None:
    """A kernel's connection file, written safely (:func:`_write_for_kernel`)."""
    _write_for_kernel(path, json.dumps(info), uid, gid, 0o600)


def write_init_key(run_dir: Path, uid: int, gid: int) -> bytes:
    """A fresh key for the next container's init, written where it reads it at boot."""
    key = secrets.token_bytes(32)
    _write_for_kernel(run_dir / INIT_KEY_FILE, key.hex(), uid, gid, 0o400)
    return key


def init_mac(key: bytes, nonce: str, reply: dict[str, Any]) -> str:
    """The proof an answer comes from init (kernel_image/init.py computes the same)."""
    body = json.dumps(reply, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, f"{nonce}\n{body}".encode(), hashlib.sha256).hexdigest()


def write_endpoint(run_dir: Path, generation: int, uid: int, gid: int) -> KernelEndpoint:
    """Write ``kernel-<g>.json`` for the kernel (container paths, 256-bit key)."""
    key = secrets.token_hex(32)
    info: dict[str, Any] = {
        "transport": "ipc",
        "ip": f"{CONTAINER_RUN_DIR}/k{generation}",
        "key": key,
        "signature_scheme": "hmac-sha256",
        "kernel_name": "agentbox",
        **PORTS,
    }
    name = f"kernel-{generation}.json"
    write_connection_file(run_dir / name, info, uid, gid)
    return KernelEndpoint(generation, name, {**info, "ip": str(run_dir / f"k{generation}")})


class InitClient:
    """Requests to agentbox-init. Called by the session for start, kill, signal, watch."""

    def __init__(self, run_dir: Path, key: bytes | None = None) -> None:
        self.path = run_dir / INIT_SOCKET
        self.key = key  # the current container's (write_init_key); set before it starts

    async def request(self, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(payload)
        except TimeoutError as exc:
            raise InitUnavailable(
                f"agentbox-init did not answer {payload.get('op')!r} within {timeout:.1f}s"
            ) from exc

    async def _exchange(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path),
                                                                limit=MAX_INIT_REPLY)
        except OSError as exc:
            raise InitUnavailable(f"cannot reach agentbox-init: {exc}") from exc
        nonce = secrets.token_hex(16)
        try:
            writer.write(json.dumps({**payload, "nonce": nonce}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            raise InitUnavailable(f"agentbox-init connection failed: {exc}") from exc
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if not line:
            raise InitUnavailable("agentbox-init closed the connection without answering")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise InitUnavailable("agentbox-init answered with invalid JSON") from exc
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise InitUnavailable("agentbox-init answered with an unexpected shape")
        mac = reply.pop("mac", None)
        if (self.key is None or not isinstance(mac, str)
                or not hmac.compare_digest(mac, init_mac(self.key, nonce, reply))):
            raise InitUnavailable("the answer on init.sock is not signed with this container's "
                                  "init key: it is not agentbox-init (replaced by the sandbox?)")
        return reply

    async def wait_exit(self, generation: int) -> dict[str, Any] | None:
        """Block until kernel *generation* exits; its exit info, or None if init went away."""
        try:
            reply = await self._exchange({"op": "wait", "generation": generation})
        except InitUnavailable:
            return None
        exit_info = reply.get("exit")
        return exit_info if reply.get("ok") and isinstance(exit_info, dict) else None

    async def wait_ready(self, deadline: float) -> None:
        while True:
            if self.path.exists():
                try:
                    await self.request({"op": "ping"}, timeout=max(0.1, deadline - time.monotonic()))
                    return
                except InitUnavailable:
                    pass
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("agentbox-init did not come up before the start deadline")
            await asyncio.sleep(0.01)


RECV_WATCH_S = 0.5


async def _recv_watched(sock: Any) -> list[bytes]:
    """``sock.recv_multipart()``, re-armed whenever ZMQ holds a message the future was not
    woken for.

    ZMQ's file descriptor is edge-triggered, and a send on the same DEALER socket can
    consume the edge of a reply that has just arrived: the recv future then sleeps
    while the reply waits in the socket (seen, rarely, as an execute_reply or a
    kernel_info reply that never came while IOPub went on). Every RECV_WATCH_S of
    silence the socket's own POLLIN is checked; a future that missed its message is
    replaced by a new recv, which takes what is waiting at once.
    """
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


def deserialize(session: Session, frames: list[bytes]) -> dict[str, Any]:
    """A kernel message from its ZMQ frames: ``Session.deserialize`` without the two
    things the host never uses and pays for on every message.

    - ``header.date`` and ``parent_header.date`` parsed with dateutil
      (``jsonutil.extract_dates``): a seventh of the host's CPU per cell; they stay
      ISO strings here, and nothing reads them.
    - the history of seen signatures, kept to refuse a replayed message: the box holds
      its kernel's key and can sign what it likes, so a replay proves nothing a forgery
      would not, and the history grows to 65,536 digests per session.

    Raises ValueError for an unsigned, wrongly signed or malformed message.
    """
    _, found = session.feed_identities(frames)
    parts = cast(list[bytes], found)  # recv_multipart() copies: bytes, not Frames
    if len(parts) < 5:
        raise ValueError(f"malformed message: {len(parts)} frames")
    if session.auth is not None and not hmac.compare_digest(
            parts[0], session.sign(parts[1:5])):
        raise ValueError("invalid signature")
    header = session.unpack(parts[1])
    parent = session.unpack(parts[2])
    if not isinstance(header, dict) or not isinstance(parent, dict):
        raise ValueError("malformed message: header or parent header is not an object")
    return {"header": header, "msg_id": header.get("msg_id"),
            "msg_type": header.get("msg_type"), "parent_header": parent,
            "metadata": session.unpack(parts[3]), "content": session.unpack(parts[4]),
            "buffers": [memoryview(b) for b in parts[5:]]}


class KernelConnection:
    """jupyter_client's async client for one kernel generation, with routed replies."""

    def __init__(self, endpoint: KernelEndpoint, *, max_message_bytes: int) -> None:
        self.endpoint = endpoint
        self.context = zmq.asyncio.Context()
        # ZMQ drops (unread) any message larger than this: a 100 MB display cannot
        # make the host allocate 100 MB.
        self.context.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.client = AsyncKernelClient(context=self.context)
        self.client.load_connection_info(endpoint.host_info)  # type: ignore[arg-type]
        self._routes: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self.unrouted = 0
        self.rejected = 0
        self.kernel_info: dict[str, Any] = {}

    async def connect(self, run_dir: Path, deadline: float, alive: Any = None) -> None:
        """Wait for the kernel's sockets, connect, and see IOPub working; by *deadline*.

        *alive* is an async callable returning False when the container or kernel
        is known dead, so a kernel that crashes at start fails fast.
        """
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
        self._pumps = [asyncio.create_task(self._pump("iopub")),
                       asyncio.create_task(self._pump("shell")),
                       asyncio.create_task(self._pump("control"))]
        await self.wait_iopub(deadline)

    async def wait_iopub(self, deadline: float) -> None:
        """kernel_info until a reply has come and a status message on IOPub too: a SUB
        socket misses what is published before its subscription lands, so the request
        is repeated until one is seen.

        An answer to *any* of the requests counts, however late: a kernel slowed down
        by a loaded machine answers every request, each later than the last, and a
        wait that only took the newest request's answer would never see one.
        Repeats back off (0.25 s doubling, at most 2 s) so as not to pile them up.
        """
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        sent: list[str] = []
        got_reply = got_iopub = False
        interval = 0.25
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"the kernel did not answer kernel_info before the deadline "
                        f"({len(sent)} sent; reply {'seen' if got_reply else 'not seen'}, "
                        f"IOPub {'seen' if got_iopub else 'not seen'})")
                msg_id = self.client.kernel_info()
                sent.append(msg_id)
                self._routes[msg_id] = queue
                try:
                    async with asyncio.timeout(min(remaining, interval)):
                        while not (got_reply and got_iopub):
                            channel, msg = await queue.get()
                            if channel == "shell":
                                got_reply = True
                                content = msg.get("content")
                                self.kernel_info = content if isinstance(content, dict) else {}
                            elif channel == "iopub":
                                got_iopub = True
                    return
                except TimeoutError:
                    interval = min(interval * 2, 2.0)
        finally:
            for msg_id in sent:
                self.release(msg_id)

    async def reconnect_iopub(self, timeout: float = 5.0) -> None:
        """A fresh IOPub socket. ZMQ drops the connection (for good) when a message
        exceeds MAXMSGSIZE; called by the session when an execution's IOPub went silent."""
        self._pumps[0].cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pumps[0]
        # jupyter_client creates the channel lazily from this attribute.
        old = self.client._iopub_channel
        self.client._iopub_channel = None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        self.client.iopub_channel.start()
        self._pumps[0] = asyncio.create_task(self._pump("iopub"))
        await self.wait_iopub(time.monotonic() + timeout)

    def route(self, msg_id: str) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._routes[msg_id] = queue
        return queue

    def release(self, msg_id: str) -> None:
        self._routes.pop(msg_id, None)

    def execute(self, code: str) -> tuple[str, asyncio.Queue[tuple[str, dict[str, Any]]]]:
        """Send an execute_request (no stdin: ``input()`` fails at once); route its replies."""
        msg = self.client.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
        })
        msg_id: str = msg["header"]["msg_id"]
        queue = self.route(msg_id)
        self.client.shell_channel.send(msg)
        return msg_id, queue

    def post(self, msg_id: str, channel: str, payload: dict[str, Any]) -> None:
        """Inject an event (e.g. a kernel death) into an execution's queue."""
        queue = self._routes.get(msg_id)
        if queue is not None:
            queue.put_nowait((channel, payload))

    async def _pump(self, channel: str) -> None:
        # One recv_multipart() per message, not jupyter_client's get_*_msg() (which awaits
        # a poll() and then the recv: two pyzmq futures), and deserialize() below: together
        # a quarter of the host's CPU per cell (bench/bench_tuning.py measures both).
        sock = {"iopub": self.client.iopub_channel, "shell": self.client.shell_channel,
                "control": self.client.control_channel}[channel].socket
        session = self.client.session
        while True:
            try:
                msg = deserialize(session, await _recv_watched(sock))
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK) or self.context.closed:
                    return  # the socket or the context is closed
                # Anything else would leave this channel unread for good: count, go on.
                self.rejected += 1
                await asyncio.sleep(0.01)
                continue
            except Exception:  # bad signature, bad JSON, bad shape: the sandbox's doing
                self.rejected += 1
                continue
            self.deliver(channel, msg)

    def deliver(self, channel: str, msg: dict[str, Any]) -> None:
        """Hand a message to the execution it answers (by parent ``msg_id``), or count
        it as unrouted: output is never attributed to another execution."""
        parent = msg.get("parent_header") if isinstance(msg, dict) else None
        parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
        queue = self._routes.get(parent_id) if isinstance(parent_id, str) else None
        if queue is None:
            self.unrouted += 1
            return
        queue.put_nowait((channel, msg))

    async def close(self) -> None:
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pumps = []
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        self.context.destroy(linger=0)
