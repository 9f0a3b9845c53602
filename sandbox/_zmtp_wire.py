"""ZMTP 3.0 on the wire, as bytes: framing, the greeting and READY, and the capped reader.

Pure (no sockets, no event loop), so every cap of :mod:`sandbox._zmtp` is checked here
with hand-made byte streams; ``sandbox._zmtp`` opens the socket and feeds it.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

GREETING = (b"\xff" + b"\x00" * 8 + b"\x7f"   # signature (ZMTP 2+ framing)
            + b"\x03\x00"                     # version 3.0: subscriptions are messages
            + b"NULL".ljust(20, b"\x00")      # mechanism
            + b"\x00"                         # as-server: no
            + b"\x00" * 31)                   # filler
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
MAX_COMMAND = 4096  # READY carries a socket type and an identity; nothing needs more
PEERS = {"DEALER": {b"ROUTER"}, "SUB": {b"PUB", b"XPUB"}}


class ZmtpError(OSError):
    """The peer broke the protocol or a cap that ends the connection."""


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message the host did not keep, and why (for the execution's notes)."""

    reason: str
    size: int  # bytes seen before it was given up (at least)
    frames: int


DELIMITER = b"<IDS|MSG>"  # Jupyter's: then signature, header, parent, metadata, content


@dataclass(frozen=True, slots=True)
class Limits:
    max_frames: int = 256
    max_bytes: int = 64 << 20
    budget: int = 8 << 20  # complete messages waiting for the reader, in bytes
    # Jupyter's header, parent header and metadata frames (the 2nd to 4th after the
    # delimiter) are not output: a message with a larger one is skipped unkept.
    max_header_bytes: int = 64 << 10


def ready_command(socket_type: str) -> bytes:
    body = b"\x05READY" + _property(b"Socket-Type", socket_type.encode())
    if socket_type == "DEALER":
        body += _property(b"Identity", b"")
    return _frame_header(COMMAND, len(body)) + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _frame_header(flags: int, size: int) -> bytes:
    if size < 256:
        return bytes([flags, size])
    return bytes([flags | LONG]) + struct.pack(">Q", size)


def encode(frames: list[bytes]) -> bytes:
    """One ZMTP message: each frame with its length, all but the last flagged MORE."""
    out = bytearray()
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        out += _frame_header(MORE if i < last else 0, len(frame))
        out += frame
    return bytes(out)


def parse_ready(body: bytes) -> dict[bytes, bytes]:
    """The properties of a READY command (untrusted: every length is checked)."""
    if not body.startswith(b"\x05READY"):
        raise ZmtpError("the peer's first command is not READY")
    props: dict[bytes, bytes] = {}
    i = 6
    while i < len(body):
        n = body[i]
        name = body[i + 1:i + 1 + n]
        i += 1 + n
        if i + 4 > len(body):
            raise ZmtpError("truncated READY property")
        (size,) = struct.unpack_from(">I", body, i)
        i += 4
        if i + size > len(body):
            raise ZmtpError("truncated READY property")
        props[name.lower()] = body[i:i + size]
        i += size
    return props


class Reader:
    """Incremental ZMTP parser for one connection: bytes in, capped messages out.

    Pure (no I/O), so every cap is unit-tested with hand-made byte streams.
    ``feed`` returns False once the connection must end (``error`` says why).
    """

    def __init__(self, limits: Limits, socket_type: str) -> None:
        self.limits = limits
        self.socket_type = socket_type
        self.buf = bytearray()
        self.stage = "greeting"  # greeting -> ready -> frames
        self.messages: deque[list[bytes] | Dropped] = deque()
        self.queued = 0  # bytes of complete messages in self.messages
        self.error: str | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._frames = 0
        self._skip_reason: str | None = None  # set while a message over the cap passes
        self._skip_body = 0  # bytes of the current frame still to throw away
        self._skip_more = False

    def feed(self, data: bytes) -> bool:
        if self._skip_body:
            n = min(self._skip_body, len(data))
            self._skip_body -= n
            data = data[n:]
            if self._skip_body == 0 and not self._skip_more:
                self._end_skip()
        self.buf += data
        try:
            self._parse()
        except ZmtpError as exc:
            self.error = str(exc)
            return False
        return True

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        while True:
            if self.stage == "greeting":
                if len(buf) - pos < 64:
                    break
                greeting = bytes(buf[pos:pos + 64])
                if greeting[0] != 0xFF or not greeting[9] & 1 or greeting[10] < 3:
                    raise ZmtpError("the peer does not speak ZMTP 3")
                if greeting[12:32].rstrip(b"\x00") != b"NULL":
                    raise ZmtpError("the peer wants a security mechanism other than NULL")
                pos += 64
                self.stage = "ready"
                continue
            if self._skip_body:  # a skipped frame's body reaches past this buffer
                break
            head = self._frame_head(buf, pos)
            if head is None:
                break
            flags, size, start = head
            if flags & COMMAND:
                if size > MAX_COMMAND:
                    raise ZmtpError(f"a ZMTP command of {size} bytes (cap {MAX_COMMAND})")
                if len(buf) - start < size:
                    break
                body = bytes(buf[start:start + size])
                pos = start + size
                self._command(body)
                continue
            if self.stage != "frames":
                raise ZmtpError("a message before the peer's READY")
            end = self._message_frame(buf, flags, size, start)
            if end < 0:  # the body is not all here yet (and is being kept)
                break
            pos = end
        del buf[:pos]

    def _frame_head(self, buf: bytearray, pos: int) -> tuple[int, int, int] | None:
        if len(buf) - pos < 2:
            return None
        flags = buf[pos]
        if flags & ~(MORE | LONG | COMMAND):
            raise ZmtpError(f"reserved ZMTP flag bits set (0x{flags:02x})")
        if flags & LONG:
            if len(buf) - pos < 9:
                return None
            (size,) = struct.unpack_from(">Q", buf, pos + 1)
            return flags, size, pos + 9
        return flags, buf[pos + 1], pos + 2

    def _command(self, body: bytes) -> None:
        if self.stage == "ready":
            props = parse_ready(body)
            peer = props.get(b"socket-type", b"")
            if peer not in PEERS[self.socket_type]:
                raise ZmtpError(f"the peer is a {peer!r} socket, not a peer of "
                                f"{self.socket_type}")
            self.stage = "frames"
        # Later commands (PING, ...) are not used by ZMTP 3.0 peers: ignored, bounded.

    def _message_frame(self, buf: bytearray, flags: int, size: int, start: int) -> int:
        """Account one message frame; the new parse position, or -1 to wait for more."""
        more = bool(flags & MORE)
        if self._skip_reason is None:
            if self._frames + 1 > self.limits.max_frames:
                raise ZmtpError(f"a message of more than {self.limits.max_frames} frames")
            if self._size + size > self.limits.max_bytes:
                self._skip_reason = (f"a message of more than {self.limits.max_bytes} bytes "
                                     f"(max_message_bytes)")
                self._parts = []
            elif size > self.limits.max_header_bytes and self._is_header_frame():
                self._skip_reason = (f"a message header of {size} bytes (cap "
                                     f"{self.limits.max_header_bytes})")
                self._parts = []
        if self._skip_reason is not None:
            # Count and throw away, without keeping: bounded memory, O(1) per frame.
            self._frames += 1
            self._size += size
            if self._frames > self.limits.max_frames:
                raise ZmtpError(f"a message of more than {self.limits.max_frames} frames")
            have = len(buf) - start
            if have < size:
                self._skip_body = size - have
                self._skip_more = more
                return len(buf)
            if not more:
                self._end_skip()
            return start + size
        if len(buf) - start < size:
            return -1
        with memoryview(buf) as view:  # one copy, not two
            self._parts.append(bytes(view[start:start + size]))
        self._frames += 1
        self._size += size
        if not more:
            self.messages.append(self._parts)
            self.queued += self._size
            self._parts, self._size, self._frames = [], 0, 0
        return start + size

    def _is_header_frame(self) -> bool:
        """Whether the frame about to come is a header, parent header or metadata."""
        for i, part in enumerate(self._parts):
            if part == DELIMITER:
                return 2 <= len(self._parts) - i <= 4
        return False

    def _end_skip(self) -> None:
        self.messages.append(Dropped(self._skip_reason or "over a cap", self._size, self._frames))
        self._skip_reason = None
        self._parts, self._size, self._frames = [], 0, 0
        self._skip_more = False

    def take(self) -> list[bytes] | Dropped | None:
        if not self.messages:
            return None
        item = self.messages.popleft()
        if isinstance(item, list):
            self.queued -= sum(len(p) for p in item)
        return item
