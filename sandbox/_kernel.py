"""Talking to one container's kernel over ZMQ (and, re-exported here for the import
paths callers use, its init and its run-dir files).

Two channels, both through the session's run directory (bind-mounted at
``/run/kernel``), neither on any network interface:

- :class:`InitClient` (``sandbox._init_client``): JSON requests to ``agentbox-init``
  over ``init.sock``, every answer signed with the container's init key.
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
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from jupyter_client.session import Session

from sandbox import _parse as parse
from sandbox import _zmtp as zmtp
from sandbox._endpoint import (
    INIT_KEY_FILE,
    INIT_SOCKET,
    PORTS,
    KernelEndpoint,
    RunDirError,
    clear_run_dir,
    container_peer,
    wait_for_sockets,
    write_connection_file,
    write_endpoint,
    write_init_key,
)
from sandbox._exceptions import DeadlineExceeded, SandboxError, SessionStartError
from sandbox._init_client import MAX_INIT_REPLY, InitClient, InitUnavailable, init_mac
from sandbox._route import ROUTE_BUDGET, Route, message_size
from sandbox._tasks import cancel_and_wait
from sandbox._wire import (
    MAX_FRAMES,
    MAX_HEADER_BYTES,
    assemble,
    deserialize,
    deserialize_async,
    split,
)

log = logging.getLogger("sandbox.kernel")
CHANNEL_BUDGET = 1 << 20  # bytes of unparsed messages waiting in one socket's reader
RECONNECT_TRIES = 20
PARSING_NOTICE_S = 0.25  # how often a long parse tells the execution IOPub is working


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

        async def exited() -> bool:
            return alive is not None and not await alive()

        await wait_for_sockets(self.endpoint.socket_paths(run_dir), deadline, exited=exited)
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
        await cancel_and_wait(self._pumps.pop("iopub", None))
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
        pumps, self._pumps = list(self._pumps.values()), {}
        await cancel_and_wait(*pumps)
        for conn in self._channels.values():
            conn.close()
        self._channels = {}


PROBE_MAX_BYTES = 1 << 20  # one kernel_info reply (untrusted: from the box) at most
PROBE_FIRST_S = 0.05  # the control probe's first repeat; x1.25 per repeat, up to:
PROBE_MAX_S = 0.5


async def probe_control(path: Path, key: bytes, signature_scheme: str, container_id: str | None,
                        deadline: float, *, exited: Callable[[], Awaitable[bool]],
                        session_id: str | None = None) -> None:
    """Until the kernel answers ``kernel_info_request`` on its control socket *path*.

    ipykernel 6.31 has a start-up race on its control lock: a control request that
    arrives just after the sockets are bound can go unanswered (measured here: most
    first requests on a loaded machine; requests sent meanwhile are lost too). The
    request is repeated every 50 ms, backing off to 0.5 s for a kernel that is just
    slow, and an answer to any of them counts. SessionStartError when the deadline
    passes, *exited* says the kernel is gone, or the connection fails.
    """
    session = Session(key=key, signature_scheme=signature_scheme)
    limits = zmtp.Limits(max_frames=MAX_FRAMES, max_bytes=PROBE_MAX_BYTES,
                         budget=PROBE_MAX_BYTES, max_header_bytes=MAX_HEADER_BYTES)
    try:
        conn = await zmtp.Connection.open(path, "DEALER", limits, container_peer(container_id))
    except OSError as exc:
        raise SessionStartError(f"cannot connect to the kernel's control socket: {exc}",
                                session_id=session_id) from exc
    interval = PROBE_FIRST_S
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionStartError("the sandboxed kernel did not answer on its control "
                                        "channel before the start deadline (start_timeout_s)",
                                        session_id=session_id)
            try:
                conn.send(session.serialize(session.msg("kernel_info_request", {})))
                async with asyncio.timeout(min(remaining, interval)):
                    await conn.recv()  # any answer: the control lock works now
                return
            except TimeoutError:  # (an OSError: caught before the next clause)
                interval = min(interval * 1.25, PROBE_MAX_S)
                if await exited():
                    raise SessionStartError("the sandboxed kernel exited while starting",
                                            session_id=session_id) from None
            except OSError as exc:  # ZmtpError: the kernel or a cap ended the connection
                raise SessionStartError(f"the kernel's control connection failed while "
                                        f"starting: {exc}", session_id=session_id) from exc
    finally:
        conn.close()


__all__ = [
    "CHANNEL_BUDGET", "INIT_KEY_FILE", "INIT_SOCKET", "MAX_FRAMES", "MAX_HEADER_BYTES",
    "MAX_INIT_REPLY", "PORTS", "ROUTE_BUDGET", "InitClient", "InitUnavailable",
    "KernelConnection", "KernelEndpoint", "Route", "RunDirError", "assemble",
    "clear_run_dir", "container_peer", "deserialize", "deserialize_async", "init_mac",
    "message_size", "probe_control", "split", "write_connection_file", "write_endpoint", "write_init_key",
]
