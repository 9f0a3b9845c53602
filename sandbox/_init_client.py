"""Requests to ``agentbox-init``, the box's PID 1, over ``init.sock`` in the run dir.

The sandbox can replace ``init.sock`` with a server of its own, so every answer
must carry an HMAC over the request's nonce made with the container's init key
(``init.key``, read and deleted by init before any sandboxed code runs); an
answer without it is treated as no answer at all.
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
from pathlib import Path
from typing import Any

from sandbox import _zmtp as zmtp
from sandbox._endpoint import INIT_SOCKET, container_peer
from sandbox._exceptions import DeadlineExceeded, SandboxError

MAX_INIT_REPLY = 64 * 1024


class InitUnavailable(SandboxError):
    """agentbox-init did not answer (container gone, or the sandbox broke it)."""


def init_mac(key: bytes, nonce: str, reply: dict[str, Any]) -> str:
    """The proof an answer comes from init (kernel_image/init.py computes the same)."""
    body = json.dumps(reply, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, f"{nonce}\n{body}".encode(), hashlib.sha256).hexdigest()


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

