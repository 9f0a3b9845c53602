"""Kernel messages from ZMQ frames, with the host's caps (see :func:`deserialize`)."""

from __future__ import annotations

import hmac
from typing import Any, cast

from jupyter_client.session import Session

from sandbox import _parse as parse

MAX_FRAMES = 256  # topic, delimiter, signature, 4 JSON parts and the buffers
MAX_HEADER_BYTES = 64 * 1024  # header, parent header and metadata, each


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

