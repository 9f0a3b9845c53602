"""Talking to one container: its init (start/kill/watch kernels) and its kernel (ZMQ).

Two channels, both through the session's run directory (bind-mounted at
``/run/kernel``), neither on any network interface:

- :class:`InitClient`: JSON requests to ``agentbox-init`` over ``init.sock``;
  the death watch is a request that is answered when the kernel exits. The
  sandbox can replace ``init.sock`` with a server of its own, so every answer
  must carry an HMAC over the request's nonce made with the container's init
  key (``init.key``, read and deleted by init before any sandboxed code runs);
  an answer without it is treated as no answer at all.
- :class:`KernelConnection`: the kernel's shell (DEALER) and IOPub (SUB) sockets
  ``k<generation>-<n>``, spoken with ``sandbox._zmtp`` (capped per frame count and
  bytes per message before anything is kept), signed and parsed with
  jupyter_client's ``Session``; two pump tasks route each message to the execution
  it answers, by parent ``msg_id``, into a :class:`Route` that holds a bounded
  number of bytes; a message that answers no live request is dropped (and counted),
  so output can never be attributed to the wrong execution.

Everything read here comes from inside the sandbox and is treated as untrusted:
sizes are bounded, JSON is type-checked, every wait has a deadline, and no name in
the run directory is followed as a link (a socket's peer must be in the container).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from jupyter_client.session import Session

from sandbox import _parse as parse
from sandbox import _zmtp as zmtp
from sandbox._exceptions import DeadlineExceeded, SandboxError
from sandbox._runtime.base import CONTAINER_RUN_DIR

INIT_SOCKET = "init.sock"
INIT_KEY_FILE = "init.key"
MAX_INIT_REPLY = 64 * 1024
log = logging.getLogger("sandbox.kernel")
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


class InitUnavailable(SandboxError):
    """agentbox-init did not answer (container gone, or the sandbox broke it)."""


class RunDirError(SandboxError):
    """The host could not write what it needs into the run dir (the box tampered with it)."""


def clear_run_dir(run_dir: Path) -> None:
    """Remove everything in the run dir (before a replacement container), links and
    directories the box planted included, never following a link."""
    for child in run_dir.iterdir():
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot clear {child.name} from the run directory: {exc}"
                              ) from exc


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

    The sandbox may have planted a symlink, a FIFO or a directory under this name:
    whatever is there is removed (unlink never follows links; a directory tree goes with
    ``shutil.rmtree``, which does not follow links either, and the run dir's tmpfs bounds
    its size), a new regular file is created exclusively and without blocking, and the
    open file is chowned, never a path. Failing that, :class:`RunDirError`: the session
    replaces the box rather than answer with a crash.
    """
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            shutil.rmtree(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_NONBLOCK, mode)
        with os.fdopen(fd, "w") as fh:
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), uid, gid)
            fh.write(text)
    except OSError as exc:
        raise RunDirError(f"cannot write {path.name} in the session's run directory "
                          f"({exc.strerror or exc}); the sandbox tampered with it") from exc


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
    # A name the box cannot guess, so it cannot plant anything there beforehand.
    name = f"kernel-{generation}-{secrets.token_hex(4)}.json"
    write_connection_file(run_dir / name, info, uid, gid)
    return KernelEndpoint(generation, name, {**info, "ip": str(run_dir / f"k{generation}")})


class InitClient:
    """Requests to agentbox-init. Called by the session for start, kill, signal, watch."""

    def __init__(self, run_dir: Path, key: bytes | None = None,
                 container_id: str | None = None) -> None:
        self.path = run_dir / INIT_SOCKET
        self.key = key  # the current container's (write_init_key); set before it starts
        # Set once the engine named the container: the peer on init.sock must be in it.
        self.container_id = container_id

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
            # Never through a link the box planted in place of init.sock (the host would
            # talk to a host socket of the box's choosing), and only to a peer that lives
            # in this container.
            sock = zmtp.open_unix(self.path, container_peer(self.container_id))
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_INIT_REPLY)
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
            if os.path.lexists(self.path):  # noqa: ASYNC240 - a stat on a tmpfs
                try:
                    await self.request({"op": "ping"}, timeout=max(0.1, deadline - time.monotonic()))
                    return
                except InitUnavailable:
                    pass
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("agentbox-init did not come up before the start deadline")
            await asyncio.sleep(0.01)


MAX_FRAMES = 256  # topic, delimiter, signature, 4 JSON parts and the buffers
MAX_HEADER_BYTES = 64 * 1024  # header, parent header and metadata, each
ROUTE_BUDGET = 8 << 20  # bytes of parsed messages waiting for one execution's reader
CHANNEL_BUDGET = 1 << 20  # bytes of unparsed messages waiting in one socket's reader
RECONNECT_TRIES = 20
PARSING_NOTICE_S = 0.25  # how often a long parse tells the execution IOPub is working


def deserialize(session: Session, frames: list[bytes],
                max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """A kernel message from its ZMQ frames: ``Session.deserialize`` without the two
    things the host never uses and pays for on every message, and with a cap on the
    parts that are not output.

    - ``header.date`` and ``parent_header.date`` parsed with dateutil
      (``jsonutil.extract_dates``): a seventh of the host's CPU per cell; they stay
      ISO strings here, and nothing reads them.
    - the history of seen signatures, kept to refuse a replayed message: the box holds
      its kernel's key and can sign what it likes, so a replay proves nothing a forgery
      would not, and the history grows to 65,536 digests per session.
    - header, parent header and metadata over *max_header_bytes* are refused before
      they are parsed (a stream of messages with huge headers is a memory attack).

    Raises ValueError for an unsigned, wrongly signed, oversized or malformed message.
    """
    parts = split(session, frames, max_header_bytes)
    if session.auth is not None and not hmac.compare_digest(
            parts[0], session.sign(parts[1:5])):
        raise ValueError("invalid signature")
    return assemble([session.unpack(p) for p in parts[1:5]], parts)


def split(session: Session, frames: list[bytes],
          max_header_bytes: int = MAX_HEADER_BYTES) -> list[bytes]:
    """The frames after the delimiter (signature, header, parent, metadata, content,
    buffers), with the caps that need no parsing checked."""
    _, found = session.feed_identities(frames)
    parts = cast(list[bytes], found)
    if len(parts) < 5:
        raise ValueError(f"malformed message: {len(parts)} frames")
    for name, part in zip(("header", "parent header", "metadata"), parts[1:4], strict=True):
        if len(part) > max_header_bytes:
            raise ValueError(f"oversized message: a {name} of {len(part)} bytes "
                             f"(cap {max_header_bytes})")
    return parts


def assemble(values: list[Any], parts: list[bytes]) -> dict[str, Any]:
    header, parent, metadata, content = values
    if not isinstance(header, dict) or not isinstance(parent, dict):
        raise ValueError("malformed message: header or parent header is not an object")
    return {"header": header, "msg_id": header.get("msg_id"),
            "msg_type": header.get("msg_type"), "parent_header": parent,
            "metadata": metadata, "content": content,
            "buffers": [memoryview(b) for b in parts[5:]]}


async def deserialize_async(session: Session, frames: list[bytes], size: int) -> dict[str, Any]:
    """:func:`deserialize`, with a message over ``INLINE_BYTES`` verified and parsed in a
    worker process (``sandbox._parse``): the event loop never spends more than a few
    milliseconds on one message, whatever the box sends."""
    if size <= parse.INLINE_BYTES:
        return deserialize(session, frames)
    parts = split(session, frames)
    key = session.key if session.auth is not None else b""
    values = await parse.parse(key, parts[:5])
    return assemble(values, parts)


def message_size(msg: dict[str, Any]) -> int:
    return cast(int, msg.get("_size", 0))


class Route:
    """One request's messages in arrival order (replies from shell, outputs from IOPub,
    events the session posts). The pump waits while more than *budget* bytes are
    unread, so a reader that falls behind slows the kernel down instead of growing the
    host: the kernel's IOPub socket then drops on its own side."""

    def __init__(self, budget: int = ROUTE_BUDGET) -> None:
        self.budget = budget
        self.size = 0
        self.closed = False
        self._items: collections.deque[tuple[str, dict[str, Any], int]] = collections.deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def put_nowait(self, item: tuple[str, dict[str, Any]], size: int = 0) -> None:
        if self.closed:
            return
        self._items.append((*item, size))
        self.size += size
        self._readable.set()
        if self.size > self.budget:
            self._room.clear()

    async def put(self, item: tuple[str, dict[str, Any]], size: int) -> None:
        """Called by the pumps: waits for room (one item is always admitted)."""
        while self.size > 0 and self.size + size > self.budget and not self.closed:
            self._room.clear()
            await self._room.wait()
        self.put_nowait(item, size)

    async def get(self) -> tuple[str, dict[str, Any]]:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        channel, msg, size = self._items.popleft()
        self.size -= size
        if self.size <= self.budget:
            self._room.set()
        return channel, msg

    def empty(self) -> bool:
        return not self._items

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self.size = 0
        self._room.set()


def container_peer(container_id: str | None) -> Callable[[int, int, int], str | None]:
    """A peer check for :func:`sandbox._zmtp.open_unix`: the process that answered on a
    run-dir socket must live in the session's container (its cgroup names the container),
    so a name the box swapped for a link to a host socket is refused."""
    def check(pid: int, uid: int, gid: int) -> str | None:
        if not container_id:
            return None  # not started yet: nothing to compare with
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return f"pid {pid} cannot be looked up"
        if container_id not in cgroups:
            return f"pid {pid} (uid {uid}) is not in container {container_id[:12]}"
        return None
    return check


class KernelConnection:
    """The host's side of one kernel generation: shell (DEALER) and IOPub (SUB) over
    ZMTP (``sandbox._zmtp``), with every message capped and routed by parent."""

    def __init__(self, endpoint: KernelEndpoint, *, max_message_bytes: int,
                 container_id: str | None = None) -> None:
        self.endpoint = endpoint
        info = endpoint.host_info
        self.session = Session(key=str(info.get("key", "")).encode(),
                               signature_scheme=str(info.get("signature_scheme",
                                                             "hmac-sha256")))
        self.limits = zmtp.Limits(max_frames=MAX_FRAMES, max_bytes=max_message_bytes,
                                  budget=CHANNEL_BUDGET, max_header_bytes=MAX_HEADER_BYTES)
        self.check_peer = container_peer(container_id)
        self._run_dir: Path | None = None
        self._channels: dict[str, zmtp.Connection] = {}
        self._routes: dict[str, Route] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self.unrouted = 0
        self.rejected = 0
        self.dropped = 0
        self.kernel_info: dict[str, Any] = {}
        self._closing = False

    def _path(self, channel: str) -> Path:
        assert self._run_dir is not None
        port = PORTS["shell_port" if channel == "shell" else "iopub_port"]
        return self._run_dir / f"k{self.endpoint.generation}-{port}"

    async def _open(self, channel: str) -> zmtp.Connection:
        kind = "DEALER" if channel == "shell" else "SUB"
        try:
            conn = await zmtp.Connection.open(self._path(channel), kind, self.limits,
                                              self.check_peer)
        except OSError as exc:
            raise SandboxError(f"cannot connect to the kernel's {channel} socket: {exc}"
                               ) from exc
        self._channels[channel] = conn
        return conn

    async def connect(self, run_dir: Path, deadline: float, alive: Any = None) -> None:
        """Wait for the kernel's sockets, connect, and see IOPub working; by *deadline*.

        *alive* is an async callable returning False when the container or kernel
        is known dead, so a kernel that crashes at start fails fast.
        """
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
        for channel in ("shell", "iopub"):
            await self._open(channel)
            self._pumps[channel] = asyncio.create_task(self._pump(channel))
        await self.wait_iopub(deadline)

    def kernel_info_request(self) -> str:
        return self.send("kernel_info_request", {})

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a request on shell; its msg_id (route it before awaiting replies)."""
        msg = self.session.msg(msg_type, content)
        conn = self._channels.get("shell")
        if conn is None:
            raise SandboxError("the kernel's shell socket is not connected")
        try:
            conn.send(self.session.serialize(msg))
        except OSError as exc:
            raise SandboxError(f"cannot send to the kernel: {exc}") from exc
        return cast(str, msg["header"]["msg_id"])

    async def wait_iopub(self, deadline: float) -> None:
        """kernel_info until a reply has come and a status message on IOPub too: a SUB
        socket misses what is published before its subscription lands, so the request
        is repeated until one is seen.

        An answer to *any* of the requests counts, however late: a kernel slowed down
        by a loaded machine answers every request, each later than the last, and a
        wait that only took the newest request's answer would never see one.
        Repeats back off (0.25 s doubling, at most 2 s) so as not to pile them up.
        """
        queue = Route()
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
                msg_id = self.kernel_info_request()
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
                self._routes.pop(msg_id, None)

    async def reconnect_iopub(self, timeout: float = 5.0) -> None:
        """A fresh IOPub connection; called by the session when an execution's IOPub
        went silent (a connection the host ended because a message broke a cap)."""
        task = self._pumps.pop("iopub", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        old = self._channels.pop("iopub", None)
        if old is not None:
            old.close()
        await self._open("iopub")
        self._pumps["iopub"] = asyncio.create_task(self._pump("iopub"))
        await self.wait_iopub(time.monotonic() + timeout)

    def route(self, msg_id: str) -> Route:
        queue = Route()
        self._routes[msg_id] = queue
        return queue

    def release(self, msg_id: str) -> None:
        queue = self._routes.pop(msg_id, None)
        if queue is not None and msg_id not in self._routes:
            queue.close()

    def execute(self, code: str) -> tuple[str, Route]:
        """Send an execute_request (no stdin: ``input()`` fails at once); route its replies."""
        msg = self.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True,
            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True,
        })
        msg_id: str = msg["header"]["msg_id"]
        queue = self.route(msg_id)
        conn = self._channels.get("shell")
        try:
            if conn is None:
                raise OSError("not connected")
            conn.send(self.session.serialize(msg))
        except OSError:
            # The reply will never come: the session's deadline and death watch decide.
            log.warning("execute_request not sent: the kernel's shell socket is closed")
        return msg_id, queue

    def post(self, msg_id: str, channel: str, payload: dict[str, Any]) -> None:
        """Inject an event (e.g. a kernel death) into an execution's queue."""
        queue = self._routes.get(msg_id)
        if queue is not None:
            queue.put_nowait((channel, payload))

    def _post_all(self, channel: str, payload: dict[str, Any]) -> None:
        for queue in set(self._routes.values()):
            queue.put_nowait((channel, payload))

    async def _pump(self, channel: str) -> None:
        """Read one channel for the kernel's lifetime: parse, cap, route. A message that
        breaks a cap is reported to the running executions (channel ``dropped``); a
        connection the host had to end is opened again, checked again."""
        tries = 0
        while not self._closing:
            conn = self._channels.get(channel)
            if conn is None:
                return
            try:
                item = await conn.recv()
            except OSError as exc:
                if self._closing:
                    return
                if conn.host_ended:  # a cap: what was in flight is lost, say so
                    self.dropped += 1
                    self._post_all("dropped", {"channel": channel, "reason": str(exc)})
                # else the kernel went away (a death or restart: the death watch reports
                # it) or closed its side; a kernel that is still there is reconnected.
                tries += 1
                if tries > RECONNECT_TRIES:
                    log.warning("kernel %s socket: giving up after %d reconnects (%s)",
                                channel, RECONNECT_TRIES, exc)
                    return
                await asyncio.sleep(min(0.05 * tries, 0.5))
                try:
                    await self._open(channel)
                except SandboxError:
                    continue
                continue
            if isinstance(item, zmtp.Dropped):
                self.dropped += 1
                self._post_all("dropped", {"channel": channel, "reason": item.reason,
                                           "size": item.size})
                continue
            tries = 0
            size = sum(len(p) for p in item)
            try:
                msg = await self._deserialize(channel, item, size)
            except parse.ParseRefused as exc:  # too big or too complex to keep
                self.dropped += 1
                self._post_all("dropped", {"channel": channel, "reason": str(exc),
                                           "size": size})
                continue
            except Exception:  # bad signature, bad JSON, bad shape: the sandbox's doing
                self.rejected += 1
                continue
            msg["_size"] = size
            await self.deliver_async(channel, msg)

    async def _deserialize(self, channel: str, frames: list[bytes], size: int
                           ) -> dict[str, Any]:
        if size <= parse.INLINE_BYTES or channel != "iopub":
            return await deserialize_async(self.session, frames, size)
        # A worker takes a while (bounded by parse.PARSE_TIMEOUT_S): meanwhile the running
        # execution is told IOPub is still working, so that it waits for its 'idle'.
        job = asyncio.ensure_future(deserialize_async(self.session, frames, size))
        try:
            while True:
                self._post_all("parsing", {})
                done, _ = await asyncio.wait({job}, timeout=PARSING_NOTICE_S)
                if done:
                    return job.result()
        finally:
            job.cancel()

    def _target(self, msg: dict[str, Any]) -> Route | None:
        parent = msg.get("parent_header") if isinstance(msg, dict) else None
        parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
        queue = self._routes.get(parent_id) if isinstance(parent_id, str) else None
        if queue is None:
            self.unrouted += 1
        return queue

    def deliver(self, channel: str, msg: dict[str, Any]) -> None:
        """Hand a message to the execution it answers (by parent ``msg_id``), or count
        it as unrouted: output is never attributed to another execution."""
        queue = self._target(msg)
        if queue is not None:
            queue.put_nowait((channel, msg), message_size(msg))

    async def deliver_async(self, channel: str, msg: dict[str, Any]) -> None:
        """:meth:`deliver`, waiting for room in the execution's queue (back-pressure)."""
        queue = self._target(msg)
        if queue is not None:
            await queue.put((channel, msg), message_size(msg))

    async def close(self) -> None:
        self._closing = True
        for task in self._pumps.values():
            task.cancel()
        for task in self._pumps.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pumps = {}
        for conn in self._channels.values():
            conn.close()
        self._channels = {}
