"""The cells the suites run, and the checks that each produced what it should (so that
a fast figure is never a failed cell)."""

from __future__ import annotations

from typing import Any

from bench.harness.errors import BenchError

TRIVIAL = "1+1"
PRINT_HEAVY = "for i in range(1000): print(i)"
DATAFRAME = "import pandas as pd, numpy as np; df = pd.DataFrame(np.random.rand(10000, 5)); df"
# Deterministic data: both kernels render the very same 600x400 PNG (inline backend).
MATPLOTLIB = ("import matplotlib.pyplot as plt, numpy as np; fig, ax = plt.subplots(figsize=(6, 4)); "
              "ax.plot(np.arange(1000) % 97); plt.show()")
VERSIONS_PROBE = (
    "import json, sys, platform, IPython, ipykernel, pandas, numpy, matplotlib\n"
    "print(json.dumps({'python': platform.python_version(), 'ipython': IPython.__version__,"
    " 'ipykernel': ipykernel.__version__, 'pandas': pandas.__version__,"
    " 'numpy': numpy.__version__, 'matplotlib': matplotlib.__version__}))"
)


def check_lib(code: str, result: Any) -> None:
    """A library ``ExecutionResult`` of *code* is what the cell should give."""
    if result.status != "ok":
        raise BenchError(f"{code!r} in the sandbox ended {result.status}: {result.notes}")
    if code == TRIVIAL and result.text != "2":
        raise BenchError(f"1+1 in the sandbox gave {result.text!r}")
    if code == PRINT_HEAVY and result.stdout.count("\n") != 1000:
        raise BenchError(f"print-heavy cell gave {result.stdout.count(chr(10))} lines, not 1000")
    if code == DATAFRAME and result.result is None:
        raise BenchError("the DataFrame cell in the sandbox displayed nothing")
    if code == MATPLOTLIB and not any(mime == "image/png" for mime, _ in result.images):
        raise BenchError("the matplotlib cell in the sandbox displayed no PNG")


def check_api(code: str, body: dict[str, Any]) -> None:
    """An HTTP API execute body of *code* is what the cell should give."""
    if body.get("status") != "ok":
        raise BenchError(f"{code!r} through the API ended {body.get('status')}: {body.get('notes')}")
    if code == MATPLOTLIB:
        if not any("image/png" in o.get("data", {}) for o in body.get("outputs", [])
                   if o.get("type") == "display_data"):
            raise BenchError("the matplotlib cell through the API displayed no PNG")
        return
    results = [o for o in body.get("outputs", []) if o.get("type") == "execute_result"]
    if not results:
        raise BenchError(f"{code!r} through the API displayed nothing")
    if code == TRIVIAL and results[0]["data"].get("text/plain") != "2":
        raise BenchError(f"1+1 through the API gave {results[0]['data'].get('text/plain')!r}")


# -- a host kernel's IOPub messages ----------------------------------------------------------
def local_stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs
                   if m["header"]["msg_type"] == "stream" and m["content"].get("name") == "stdout")


def local_result_mimes(msgs: list[dict[str, Any]]) -> list[str]:
    for m in msgs:
        if m["header"]["msg_type"] == "execute_result":
            return sorted(m["content"].get("data", {}))
    return []


def local_display_mimes(msgs: list[dict[str, Any]]) -> list[str]:
    return sorted({mime for m in msgs if m["header"]["msg_type"] == "display_data"
                   for mime in m["content"].get("data", {})})


def check_local(code: str, reply: dict[str, Any], msgs: list[dict[str, Any]]) -> None:
    """A host kernel's reply and IOPub messages for *code* are what the cell should give."""
    status = reply.get("content", {}).get("status")
    if status != "ok":
        raise BenchError(f"{code!r} on the host kernel ended {status}")
    if code == PRINT_HEAVY and local_stdout(msgs).count("\n") != 1000:
        raise BenchError("print-heavy cell on the host kernel did not print 1000 lines")
    if code in (TRIVIAL, DATAFRAME) and not local_result_mimes(msgs):
        raise BenchError(f"{code!r} on the host kernel displayed nothing")
    if code == MATPLOTLIB and "image/png" not in local_display_mimes(msgs):
        raise BenchError("the matplotlib cell on the host kernel displayed no PNG")
