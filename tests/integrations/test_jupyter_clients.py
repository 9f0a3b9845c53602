"""Jupyter clients the project did not write, on the agentbox kernelspec.

- jupyter_client's own auto-restarter (the path JupyterLab takes when a kernel
  dies): the files in the box survive the death and the restart, and the server
  log says why the kernel died.
- ``jupyter run`` and ``jupyter console`` shut their kernel down at interpreter
  exit (or never tell the KernelManager at all): no container and no run
  directory may be left behind, and nothing may fail at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import nbformat
import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from nbclient import NotebookClient
from traitlets.config import Config

from sandbox._config import default_base_dir
from sandbox._notebook import notebook_dict
from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID
from sandbox.cli import main
from sandbox.integrations.kernelspec import install_kernel_spec
from sandbox.integrations.provisioner import LABEL_KERNEL_ID, AgentBoxProvisioner

pytestmark = pytest.mark.usefixtures("engine")

BIN = Path(sys.executable).parent  # the venv's jupyter commands
CLIENT_TIMEOUT_S = 120  # a whole front-end run: start a container, one cell, exit


def containers_of(client: docker.DockerClient, pid: int) -> list[Any]:
    labels = [f"{LABEL_APP}=agentbox", f"{LABEL_OWNER_PID}={pid}", LABEL_KERNEL_ID]
    return client.containers.list(all=True, filters={"label": labels})


def run_dirs() -> set[Path]:
    root = default_base_dir()
    return set(root.iterdir()) if root.exists() else set()


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> Path:
    """`agentbox kernelspec install --prefix TMP`; JUPYTER_PATH finds it (here and in
    the front ends started as subprocesses)."""
    path = tmp_path / "share" / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", str(path))
    assert main(["kernelspec", "install", "--prefix", str(tmp_path), "--memory-mb", "512"]) == 0
    capsys.readouterr()
    return path


@pytest.fixture
def no_leaks(engine: docker.DockerClient) -> Iterator[None]:
    before = run_dirs()
    yield
    left = containers_of(engine, os.getpid())
    for c in left:
        c.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"
    assert run_dirs() <= before, f"run directories left: {sorted(map(str, run_dirs() - before))}"


def assert_nothing_left(engine: docker.DockerClient, pid: int, before: set[Path],
                        done: subprocess.CompletedProcess[str]) -> None:
    left = containers_of(engine, pid)
    for c in left:
        c.remove(force=True)
    assert not left, f"{done.args[0]} left containers: {[c.name for c in left]}\n{done.stderr}"
    assert run_dirs() <= before, f"run directories left: {sorted(map(str, run_dirs() - before))}"
    assert "cannot schedule new futures" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_jupyter_run_leaves_no_container(jupyter_path: Path, tmp_path: Path,
                                         engine: docker.DockerClient) -> None:
    # `jupyter run` shuts its kernel down from an atexit handler, when the default
    # executor already refuses new work.
    script = tmp_path / "cell.py"
    script.write_text("import os\nprint('in the box as', os.getuid() != 0)\n")
    before = run_dirs()
    proc = subprocess.Popen([str(BIN / "jupyter"), "run", "--kernel=agentbox", str(script)],
                            cwd=tmp_path, env={**os.environ,
                                               "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=CLIENT_TIMEOUT_S)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_nothing_left(engine, proc.pid, before, done)
    assert done.returncode == 0, err
    assert "in the box as True" in out


def test_jupyter_console_leaves_no_container(jupyter_path: Path, tmp_path: Path,
                                             engine: docker.DockerClient) -> None:
    # `jupyter console` only sends shutdown_request at exit: the KernelManager is never
    # told, so the provisioner's own exit hook must remove the container.
    before = run_dirs()
    proc = subprocess.Popen([str(BIN / "jupyter"), "console", "--kernel=agentbox",
                             "--simple-prompt"],
                            cwd=tmp_path, env={**os.environ,
                                               "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate("print(6 * 7)\nexit\n", timeout=CLIENT_TIMEOUT_S)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_nothing_left(engine, proc.pid, before, done)
    assert done.returncode == 0, err
    assert "42" in out and "Shutting down kernel" in out


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_auto_restart_after_a_death_keeps_the_files(
        jupyter_path: Path, no_leaks: None, engine: docker.DockerClient,
        caplog: pytest.LogCaptureFixture, runtime: str) -> None:
    # The restarter JupyterLab uses: it notices the death and calls
    # restart_kernel(now=True), which kills without the restart flag.
    install_kernel_spec(prefix=str(jupyter_path.parent.parent),
                        config={"memory_mb": 512, "sandbox_config": {"runtime": runtime}})
    log = logging.getLogger("agentbox.test.jupyter")
    config = Config({"KernelRestarter": {"time_to_dead": 0.5}})
    km = AsyncIOLoopKernelManager(kernel_name="agentbox", config=config, log=log)
    await km.start_kernel()
    restarted = asyncio.Event()
    km.add_restart_callback(restarted.set, "restart")  # the restarter exists once started
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        (before,) = containers_of(engine, os.getpid())
        reply = await kc.execute_interactive(
            "x = 1\nopen('/home/sandbox/kept.txt', 'w').write('still here')", timeout=60)
        assert reply["content"]["status"] == "ok"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=log.name):
            kc.execute("import os; os._exit(3)")
            async with asyncio.timeout(30):
                await restarted.wait()
            await kc.wait_for_ready(timeout=60)
        out: list[str] = []
        reply = await kc.execute_interactive(
            "print('x' in globals(), open('/home/sandbox/kept.txt').read())", timeout=60,
            output_hook=lambda m: out.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        assert "".join(out) == "False still here\n"  # a fresh kernel, the same files
        (after,) = containers_of(engine, os.getpid())
        assert after.id == before.id
        assert after.attrs["HostConfig"]["Runtime"] == runtime
        prov = km.provisioner
        assert isinstance(prov, AgentBoxProvisioner) and prov._generation == 2
        deaths = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
        assert len(deaths) == 1 and deaths[0].endswith("the kernel exited with code 3"), deaths
        assert all(r.levelno == logging.WARNING for r in caplog.records if "died" in r.message)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_out_of_memory_death_is_logged_with_the_limit(
        jupyter_path: Path, no_leaks: None, caplog: pytest.LogCaptureFixture,
        runtime: str) -> None:
    install_kernel_spec(prefix=str(jupyter_path.parent.parent),
                        config={"memory_mb": 512, "sandbox_config": {"runtime": runtime}})
    log = logging.getLogger("agentbox.test.jupyter.oom")
    km = AsyncIOLoopKernelManager(kernel_name="agentbox", log=log)
    km.autorestart = False  # this test only watches the death
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        with caplog.at_level(logging.WARNING, logger=log.name):
            kc.execute("hog = bytearray(2 * 1024**3)")  # over the kernelspec's 512 MiB
            async with asyncio.timeout(60):
                while await km.is_alive():
                    await asyncio.sleep(0.2)
        deaths = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
        # Under gVisor the whole container goes (its kernel is the one OOM-killed).
        expected = ("out of memory: the kernel was killed for exceeding the 512 MiB limit"
                    if runtime == "runc" else
                    "out of memory: the container was killed (limit 512 MiB)")
        assert len(deaths) == 1 and deaths[0].endswith(expected), deaths
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def test_an_exported_notebook_reopens_on_the_sandbox(jupyter_path: Path, no_leaks: None) -> None:
    # nbclient, like JupyterLab, starts the kernel the notebook's metadata names.
    exported = notebook_dict([("import socket\nprint(socket.gethostname())", None)])
    assert exported["metadata"]["kernelspec"]["name"] == "agentbox"
    nb = nbformat.from_dict(exported)
    nbformat.validate(nb)
    NotebookClient(nb, timeout=120).execute()
    (out,) = nb.cells[0].outputs
    assert out["output_type"] == "stream" and out["text"] == "sandbox\n"


async def test_a_control_request_right_after_start_is_answered(jupyter_path: Path,
                                                               no_leaks: None) -> None:
    # ipykernel 6.31 can lose a control request that arrives just after its sockets are
    # bound (most first requests, measured on a loaded machine): start returns only
    # once the kernel answers on control, so a front end's first interrupt or
    # shutdown_request is never lost.
    for _ in range(3):
        km = AsyncIOLoopKernelManager(kernel_name="agentbox")
        km.autorestart = False
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            msg = kc.session.msg("kernel_info_request")
            kc.control_channel.send(msg)
            async with asyncio.timeout(20):
                while True:
                    reply = await kc.control_channel.get_msg(timeout=20)
                    if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                        break
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
