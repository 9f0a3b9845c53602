"""Executed cells → a valid nbformat 4 notebook (for `agentbox demo`, the API's export).

Built as plain dicts and validated once: nbformat's ``new_output`` validates each
output on its own with jsonschema, which took seconds per ten thousand outputs; the
API's export skips NotebookNode and validation altogether (:func:`notebook_dict`).
An export can be bounded (``max_bytes`` of outputs, ``max_outputs``): past either,
the remaining cells keep their code, lose their outputs, and say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import nbformat
from nbformat import NotebookNode

from sandbox._models import DisplayOutput, ErrorOutput, ExecutionResult, Output, StreamOutput
from sandbox._output_caps import human_bytes, output_size

SKIPPED = "outputs not exported"  # how a cell's note starts when its outputs were left out
# The agentbox kernelspec (sandbox.provisioner): Jupyter reopens the notebook on the
# sandbox, not on the host's own python3.
KERNELSPEC = {"name": "agentbox", "display_name": "Python 3 (Agent Box sandbox)",
              "language": "python"}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _is_json_mime(mime: str) -> bool:
    return mime.startswith("application/") and (mime == "application/json"
                                                 or mime.endswith("+json"))


def _bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A MIME bundle nbformat accepts: a box may send any JSON under any type, but only
    JSON types may hold other than text, so other values become their JSON text."""
    clean: dict[str, Any] = {}
    for mime, value in data.items():
        text_ok = isinstance(value, str) or (isinstance(value, list)
                                             and all(isinstance(x, str) for x in value))
        clean[mime] = value if text_ok or _is_json_mime(mime) else json.dumps(value)
    return clean


def output_dict(output: Output) -> dict[str, Any]:
    """One output in nbformat 4's shape, valid whatever the box sent."""
    if isinstance(output, StreamOutput):
        return {"output_type": "stream", "name": str(output.name), "text": str(output.text)}
    if isinstance(output, ErrorOutput):
        return {"output_type": "error", "ename": str(output.ename),
                "evalue": str(output.evalue), "traceback": [str(x) for x in output.traceback]}
    assert isinstance(output, DisplayOutput)
    metadata = output.metadata if isinstance(output.metadata, dict) else {}
    if output.type == "execute_result":
        return {"output_type": "execute_result", "data": _bundle(output.data),
                "metadata": metadata, "execution_count": _count(output.execution_count)}
    return {"output_type": "display_data", "data": _bundle(output.data), "metadata": metadata}


def output_node(output: Output) -> NotebookNode:
    return nbformat.from_dict(output_dict(output))


class _Budget:
    """What an export may still hold; once spent, no later cell gets outputs."""

    def __init__(self, max_bytes: int | None, max_outputs: int | None) -> None:
        self.max_bytes, self.max_outputs = max_bytes, max_outputs
        self.bytes = self.outputs = 0
        self.spent = False

    def admit(self, outputs: list[Output]) -> bool:
        if not self.spent:
            size = sum(output_size(o) for o in outputs)
            over_bytes = self.max_bytes is not None and self.bytes + size > self.max_bytes
            over_count = (self.max_outputs is not None
                          and self.outputs + len(outputs) > self.max_outputs)
            if not (over_bytes or over_count):
                self.bytes += size
                self.outputs += len(outputs)
                return True
            self.spent = True
        return False

    def note(self) -> str:
        limits = []
        if self.max_bytes is not None:
            limits.append(human_bytes(self.max_bytes))
        if self.max_outputs is not None:
            limits.append(f"{self.max_outputs} outputs")
        return (f"{SKIPPED}: the notebook reached its limit of "
                f"{' or '.join(limits)}; the code is kept")


def _cell(code: str, result: ExecutionResult | None, budget: _Budget) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": "code", "execution_count": None, "metadata": {},
                            "outputs": [], "source": code}
    if result is None:
        return cell
    cell["execution_count"] = _count(result.execution_count)
    meta: dict[str, Any] = {"status": result.status,
                            "duration_ms": round(result.duration_s * 1000, 1)}
    notes = list(result.notes)
    if budget.admit(result.outputs):
        cell["outputs"] = [output_dict(o) for o in result.outputs]
    elif result.outputs:
        notes.append(budget.note())
    if notes:
        meta["notes"] = notes
    cell["metadata"]["agentbox"] = meta
    return cell


def _notes(cell: dict[str, Any]) -> list[str]:
    return [str(n) for n in cell["metadata"].get("agentbox", {}).get("notes", [])]


def notebook_dict(cells: Iterable[tuple[str, ExecutionResult | None]],
                  metadata: dict[str, Any] | None = None, *, max_bytes: int | None = None,
                  max_outputs: int | None = None) -> dict[str, Any]:
    """The notebook as plain JSON data, valid by construction (the tests check it with
    nbformat): no NotebookNode, no validation pass, for exports of large histories."""
    budget = _Budget(max_bytes, max_outputs)
    body = []
    for i, (code, result) in enumerate(cells):
        cell = _cell(code, result, budget)
        cell["id"] = f"cell-{i}"
        body.append(cell)
    meta: dict[str, Any] = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"},
                            **(metadata or {})}
    # Cells that lost their outputs here or before (an export reads a bounded history).
    said = [next((n for n in _notes(cell) if n.startswith(SKIPPED)), None) for cell in body]
    skipped = [n for n in said if n is not None]
    if skipped:
        agentbox = dict(meta.get("agentbox") or {})
        agentbox["truncated"] = {"cells_without_outputs": len(skipped), "note": skipped[0]}
        meta["agentbox"] = agentbox
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": meta, "cells": body}


def to_notebook(cells: Iterable[tuple[str, ExecutionResult | None]],
                metadata: dict[str, Any] | None = None, *, max_bytes: int | None = None,
                max_outputs: int | None = None) -> NotebookNode:
    """One code cell per (code, result); a None result is a cell that never ran."""
    nb = nbformat.from_dict(notebook_dict(cells, metadata, max_bytes=max_bytes,
                                          max_outputs=max_outputs))
    nbformat.validate(nb)
    return nb


def dumps(nb: dict[str, Any], indent: int | None = 1) -> str:
    """The notebook as nbformat writes it (sorted keys, ``indent`` 1), without validating
    and deep-copying it again. ``indent=None`` lets the C encoder do it: several times
    faster, for exports nobody reads as text."""
    return json.dumps(nb, indent=indent, sort_keys=True, ensure_ascii=False,
                      separators=(",", ": ") if indent is not None else None) + "\n"


def notebook_chunks(nb: dict[str, Any]) -> Iterator[bytes]:
    """:func:`dumps` with ``indent=None``, as UTF-8, one output at a time: each
    ``json.dumps`` call holds the interpreter lock for as long as it runs, so a large
    export encoded in one call would stall every other thread (the event loop too)."""
    head = {k: v for k, v in nb.items() if k != "cells"}
    yield b'{"cells": ['
    for i, cell in enumerate(nb["cells"]):
        if i:
            yield b", "
        rest = json.dumps({k: v for k, v in cell.items() if k != "outputs"},
                          sort_keys=True, ensure_ascii=False)
        yield b'{"outputs": ['
        for j, output in enumerate(cell.get("outputs", [])):
            if j:
                yield b", "
            yield json.dumps(output, sort_keys=True, ensure_ascii=False).encode()
        yield b"], " + rest[1:].encode()
    yield b"], " + json.dumps(head, sort_keys=True, ensure_ascii=False)[1:].encode() + b"\n"
