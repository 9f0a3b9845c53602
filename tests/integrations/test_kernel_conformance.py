"""The Jupyter project's kernel conformance suite (jupyter_kernel_test) against the
agentbox kernelspec: every message type a front end relies on (kernel_info, execute
with stdout/stderr/errors/results/display data/clear_output, complete, is_complete,
inspect, the pager, history tail/range/search), with each reply validated against
the message spec. Every test runs: each sample is set, so the suite skips nothing.

The samples are those of ipykernel's own run of the suite; the kernel runs in its
hardened container through the provisioner, as for any Jupyter front end.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, ClassVar

import jupyter_kernel_test
import pytest

from sandbox.integrations.kernelspec import KERNEL_NAME, install_kernel_spec

pytestmark = pytest.mark.usefixtures("engine")


class TestAgentBoxKernel(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [
        {"text": "zi", "matches": {"zip"}},
    ]
    complete_code_samples: ClassVar[list[str]] = [
        "1", "print('hello, world')", "def f(x):\n  return x*2\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ['print("""hello', "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('conformance')"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    runtime: ClassVar[str] = "runc"
    _spec_dir: ClassVar[tempfile.TemporaryDirectory[str]]
    _saved_path: ClassVar[str | None]

    @classmethod
    def setUpClass(cls) -> None:
        # The suite starts kernel `agentbox` by name: install the kernelspec into a
        # prefix of its own and let JUPYTER_PATH find it before the kernel starts.
        cls._spec_dir = tempfile.TemporaryDirectory(prefix="agentbox-jkt-")
        install_kernel_spec(prefix=cls._spec_dir.name, config={
            "memory_mb": 512, "sandbox_config": {"runtime": cls.runtime}})
        cls._saved_path = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.path.join(cls._spec_dir.name, "share", "jupyter")
        try:
            super().setUpClass()
        except BaseException:
            cls._restore()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()  # shutdown_kernel: the container and run dir go
        finally:
            cls._restore()

    @classmethod
    def _restore(cls) -> None:
        if cls._saved_path is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = cls._saved_path
        cls._spec_dir.cleanup()


class TestAgentBoxKernelGVisor(TestAgentBoxKernel):
    """The same suite with the kernel under gVisor (runsc)."""

    runtime = "runsc"
