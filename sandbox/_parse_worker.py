"""Verify and parse one large kernel message, in a process of its own (stdlib only).

Run as a script by :mod:`sandbox._parse` (``python -I this_file``), never imported by
the host's event loop. Parsing JSON holds the GIL for as long as it takes — about a
second for 60 MB of small values — so a large message parsed on the host's loop would
stall every other session; here it stalls only this worker. What comes back is
bounded: at most ``MAX_VALUES`` JSON values, so the host's share of the work (one
``marshal.loads``) stays small whatever the box sent.

Protocol on stdin/stdout, both length-prefixed (8-byte big-endian):
request  = key, then frame count (4 bytes), then each frame;
response = marshal of ``("ok", [header, parent, metadata, content])`` or
           ``("refused", reason)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import marshal
import resource
import struct
import sys
from typing import Any, BinaryIO

MAX_VALUES = 250_000
MEMORY_LIMIT = 3 << 30


def count_values(value: Any, limit: int) -> int:
    """JSON values in *value* (iteratively: no recursion limit), stopping past *limit*."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.values())
            count += len(item)  # the keys
        elif isinstance(item, list):
            stack.extend(item)
    return count


def parse(key: bytes, parts: list[bytes]) -> tuple[str, Any]:
    """*parts* = signature, header, parent, metadata, content (after the delimiter)."""
    if len(parts) < 5:
        return "refused", f"malformed message: {len(parts)} frames"
    if key:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        for part in parts[1:5]:
            mac.update(part)
        if not hmac.compare_digest(mac.hexdigest().encode(), parts[0]):
            return "refused", "invalid signature"
    try:
        values = [json.loads(part) for part in parts[1:5]]
    except (ValueError, RecursionError, MemoryError) as exc:
        return "refused", f"malformed JSON ({type(exc).__name__})"
    counted = count_values(values, MAX_VALUES)
    if counted > MAX_VALUES:
        return "refused", f"its JSON holds more than {MAX_VALUES:,} values"
    return "ok", values


def _read(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    while True:
        try:
            (klen,) = struct.unpack(">Q", _read(stdin, 8))
            key = _read(stdin, klen)
            (count,) = struct.unpack(">I", _read(stdin, 4))
            parts = []
            for _ in range(count):
                (size,) = struct.unpack(">Q", _read(stdin, 8))
                parts.append(_read(stdin, size))
        except EOFError:
            return
        try:
            answer = parse(key, parts)
            body = marshal.dumps(answer)
        except MemoryError:
            body = marshal.dumps(("refused", "too large to parse within the worker's memory"))
        del parts
        stdout.write(struct.pack(">Q", len(body)) + body)
        stdout.flush()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    serve(sys.stdin.buffer, sys.stdout.buffer)
