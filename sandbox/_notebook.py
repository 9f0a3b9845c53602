"""Executed cells → a valid nbformat 4 notebook (for `agentbox demo`, the API's export)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_notebook, new_output

from sandbox._models import DisplayOutput, ErrorOutput, ExecutionResult, Output, StreamOutput


def output_node(output: Output) -> NotebookNode:
    if isinstance(output, StreamOutput):
        return new_output("stream", name=output.name, text=output.text)
    if isinstance(output, ErrorOutput):
        return new_output("error", ename=output.ename, evalue=output.evalue,
                          traceback=output.traceback)
    assert isinstance(output, DisplayOutput)
    if output.type == "execute_result":
        return new_output("execute_result", data=output.data, metadata=output.metadata,
                          execution_count=output.execution_count)
    return new_output("display_data", data=output.data, metadata=output.metadata)


def to_notebook(cells: Iterable[tuple[str, ExecutionResult | None]],
                metadata: dict[str, Any] | None = None) -> NotebookNode:
    """One code cell per (code, result); a None result is a cell that never ran."""
    nb = new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (Agent Box sandbox)",
                       "language": "python"},
        "language_info": {"name": "python"},
        **(metadata or {}),
    })
    for code, result in cells:
        cell = new_code_cell(source=code)
        if result is not None:
            cell.execution_count = result.execution_count
            cell.outputs = [output_node(o) for o in result.outputs]
            cell.metadata["agentbox"] = {"status": result.status,
                                         "duration_ms": round(result.duration_s * 1000, 1)}
            if result.notes:
                cell.metadata["agentbox"]["notes"] = list(result.notes)
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def dumps(nb: NotebookNode) -> str:
    return str(nbformat.writes(nb))
