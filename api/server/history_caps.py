"""What one execution's history row may hold: the per-row cap (fit_execution) and the
stub a full key's history gets instead (stub_execution). Sizes are counted in characters,
as the databases' ``length()`` does."""

from __future__ import annotations

import json
from typing import Any

MiB = 1024 * 1024
MAX_EXECUTION_BYTES = 16 * MiB
MAX_KEY_BYTES = 1024 * MiB
STUB_CODE = 1000  # characters of code a stub keeps
STUB_NOTES, STUB_NOTE = 10, 500  # notes a stub keeps, and characters of each
STUB_MAX = 8 * 1024  # what a stub holds at most (code, notes, fields and JSON)


def _row_chars(code: str, text: str) -> int:
    return len(code) + len(text)



def _note(result: dict[str, Any], note: str) -> None:
    result["notes"] = [*list(result.get("notes") or []), note]
    result["truncated"] = True


def fit_execution(code: str, result: dict[str, Any], max_chars: int
                  ) -> tuple[str, dict[str, Any], str, list[str]]:
    """The (code, result, result JSON) to store within *max_chars*, and what was cut.

    First the fields that repeat the outputs (stdout, stderr, the error's traceback:
    ExecutionResult.from_dict rebuilds them from the outputs), then outputs from the
    end, then the code's tail. Exact: the returned row is never over *max_chars*."""
    text = json.dumps(result)
    if _row_chars(code, text) <= max_chars:
        return code, result, text, []
    said: list[str] = []
    slim = dict(result)
    slim["stdout"], slim["stderr"] = "", ""
    if isinstance(slim.get("error"), dict):
        slim["error"] = {**slim["error"], "traceback": []}
    note = (f"history: this row is capped at {max_chars} characters; the stdout, stderr "
            "and error fields are not stored (they repeat the outputs)")
    _note(slim, note)
    said.append(note)
    outputs = list(slim.get("outputs") or [])
    slim["outputs"] = []
    base = len(json.dumps(slim)) + 400  # + the note below
    if len(code) + base > max_chars:  # the code alone is too long (a small cap)
        keep = max(0, max_chars - base - 100)
        code = code[:keep] + f"\n# [history: {len(code) - keep} characters of code not stored]"
    room = max_chars - len(code) - base
    kept: list[Any] = []
    for out in outputs:
        size = len(json.dumps(out)) + 2
        if size > room:
            break
        kept.append(out)
        room -= size
    slim["outputs"] = kept
    if len(kept) < len(outputs):
        note = (f"history: {len(outputs) - len(kept)} of {len(outputs)} outputs not stored, "
                f"over the per-execution history limit of {max_chars} characters")
        _note(slim, note)
        said.append(note)
    text = json.dumps(slim)
    if _row_chars(code, text) > max_chars:  # cannot happen (base has room for the note)
        code, slim, text = stub_execution(code, slim, said[-1])
    return code, slim, text, said


def stub_execution(code: str, result: dict[str, Any], note: str
                   ) -> tuple[str, dict[str, Any], str]:
    """What is stored once a key's history is full: the cell ran, so it is recorded,
    in at most STUB_MAX characters (the history's note first, then what fits)."""
    if len(code) > STUB_CODE:
        code = code[:STUB_CODE] + f"\n# [history: {len(code) - STUB_CODE} more " \
                                  "characters of code not stored]"
    error = result.get("error")
    count = result.get("execution_count")
    duration = result.get("duration_ms")
    stub: dict[str, Any] = {
        "status": str(result.get("status", "ok"))[:16],
        "execution_count": count if isinstance(count, int) else None,
        "outputs": [], "stdout": "", "stderr": "",
        "error": {"ename": str(error.get("ename", ""))[:200],
                  "evalue": str(error.get("evalue", ""))[:500], "traceback": []}
        if isinstance(error, dict) else None,
        "duration_ms": float(duration) if isinstance(duration, int | float) else 0.0,
        "truncated": True, "timeout": None, "death": None,
        "kernel_restarted": bool(result.get("kernel_restarted", False)),
        "notes": [note[:STUB_NOTE]] + [str(n)[:STUB_NOTE] for n in
                                       list(result.get("notes") or [])[:STUB_NOTES]],
    }
    text = json.dumps(stub)
    # JSON escapes can make a short text long: drop notes, then the error, until it fits.
    while _row_chars(code, text) > STUB_MAX and len(stub["notes"]) > 1:
        stub["notes"].pop()
        text = json.dumps(stub)
    if _row_chars(code, text) > STUB_MAX:
        stub["error"] = None
        text = json.dumps(stub)
    return code, stub, text
