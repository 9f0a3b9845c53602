"""The Jupyter kernel provisioner: any Jupyter front end runs its cells in a sandbox.

The kernelspec is installed with ``agentbox kernelspec install`` into a temporary
prefix that ``JUPYTER_PATH`` points at; nbclient (as papermill and JupyterLab would)
and jupyter_client's own KernelManager then start kernel ``agentbox`` and get the
hardened container, with interrupt, restart and a clean shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import nbformat
import pytest
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets.config import Config

from sandbox._config import default_base_dir
from sandbox._exceptions import SessionStartError
from sandbox._models import DATAFRAME_MIME
from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID, LABEL_RUN_DIR, LABEL_SESSION
from sandbox._uids import UID_BASE
from sandbox.cli import main
from sandbox.integrations.provisioner import LABEL_KERNEL_ID, AgentBoxProvisioner

pytestmark = pytest.mark.usefixtures("engine")

OURS = [f"{LABEL_APP}=agentbox", f"{LABEL_OWNER_PID}={os.getpid()}", LABEL_KERNEL_ID]


def provisioner_containers(client: docker.DockerClient) -> list[Any]:
    return client.containers.list(all=True, filters={"label": OURS})


@pytest.fixture
def no_leaks(engine: docker.DockerClient) -> Iterator[None]:
    """After the test: no kernel container of this process, no new run directory."""
    root = default_base_dir()
    before = set(root.iterdir()) if root.exists() else set()
    yield
    left = provisioner_containers(engine)
    for c in left:
        c.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"
    after = set(root.iterdir()) if root.exists() else set()
    assert after <= before, f"run directories left behind: {sorted(map(str, after - before))}"


@pytest.fixture
def kernelspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str], no_leaks: None) -> Path:
    """`agentbox kernelspec install --prefix TMP`, found through JUPYTER_PATH."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    assert main(["kernelspec", "install", "--prefix", str(tmp_path), "--memory-mb", "512"]) == 0
    where = tmp_path / "share" / "jupyter" / "kernels" / "agentbox"
    assert str(where) in capsys.readouterr().out
    return where


@pytest.fixture
async def kernel(kernelspec: Path) -> AsyncIterator[tuple[AsyncKernelManager, AsyncKernelClient]]:
    km = AsyncKernelManager(kernel_name="agentbox")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def run(kc: AsyncKernelClient, code: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
    """Execute *code*; its reply content and everything it printed."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(out)


def test_kernelspec_names_the_provisioner(kernelspec: Path) -> None:
    spec = json.loads((kernelspec / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (Agent Box sandbox)"
    assert spec["language"] == "python" and spec["interrupt_mode"] == "signal"
    assert "{connection_file}" in spec["argv"]
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "agentbox-provisioner", "config": {"memory_mb": 512}}
    found = KernelSpecManager().get_kernel_spec("agentbox")
    assert found.resource_dir == str(kernelspec)


def test_kernelspec_install_refuses_bad_limits(tmp_path: Path) -> None:
    assert main(["kernelspec", "install", "--prefix", str(tmp_path), "--memory-mb", "1"]) == 2
    assert not (tmp_path / "share").exists()


def test_notebook_runs_inside_the_sandbox(kernelspec: Path, engine: docker.DockerClient,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBOX_TEST_CANARY", "host-secret")
    cells = [
        "import os, socket\nprint(os.getuid(), socket.gethostname())",
        "sorted(os.listdir('/sys/class/net'))",
        "try:\n    open('/usr/agentbox-probe', 'w')\nexcept OSError as exc:\n"
        "    print('denied', exc.errno)\nelse:\n    print('WRITABLE')\n"
        "print([line.split()[3].split(',')[0] for line in open('/proc/self/mounts')"
        " if line.split()[1] == '/'])",
        "print('AGENTBOX_TEST_CANARY' in os.environ, 'host-secret' in str(os.environ))",
        "paths = ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']\n"
        "print(next(open(p).read().strip() for p in paths if os.path.exists(p)))",
        "import pandas as pd\npd.DataFrame({'city': ['Lisbon', 'Porto'], 'n': [1, 2]})",
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, kernel_name="agentbox", timeout=120).execute()

    def stdout(i: int) -> str:
        return "".join(o["text"] for o in nb.cells[i].outputs if o["output_type"] == "stream")

    uid, host = stdout(0).split()
    assert uid != "0" and int(uid) >= UID_BASE and host == "sandbox"  # a uid of its own
    (net,) = nb.cells[1].outputs
    assert net["data"]["text/plain"] == "['lo']"
    assert stdout(2).startswith("denied ") and "WRITABLE" not in stdout(2)
    assert stdout(2).splitlines()[-1] == "['ro']"
    assert stdout(3).strip() == "False False"
    assert stdout(4).strip() == str(512 * 1024 * 1024)  # the kernelspec's memory_mb
    (frame,) = nb.cells[5].outputs
    assert frame["output_type"] == "execute_result"
    assert "<table" in frame["data"]["text/html"] and "Lisbon" in frame["data"]["text/html"]
    assert frame["data"][DATAFRAME_MIME]["shape"] == [2, 2]
    figures = [o for o in nb.cells[6].outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 1 and figures[0]["output_type"] == "display_data"
    assert not provisioner_containers(engine)


async def test_container_carries_the_labels(kernel: tuple[AsyncKernelManager, AsyncKernelClient],
                                            engine: docker.DockerClient) -> None:
    km, _ = kernel
    prov = km.provisioner
    assert isinstance(prov, AgentBoxProvisioner) and prov.run_dir is not None
    (container,) = provisioner_containers(engine)
    labels = container.labels
    assert labels[LABEL_SESSION] == prov.session_id
    assert labels[LABEL_RUN_DIR] == str(prov.run_dir)
    assert labels[LABEL_KERNEL_ID] == km.kernel_id
    assert prov.run_dir.parent == default_base_dir()
    assert (prov.run_dir.stat().st_mode & 0o777) == 0o700
    # The KernelManager talks to the host side of the kernel's sockets.
    assert km.transport == "ipc" and km.ip == str(prov.run_dir / "k1")
    inside = json.loads((prov.run_dir / "kernel.json").read_text())
    assert inside["ip"] == "/run/kernel/k1" and inside["key"] == km.session.key.decode()
    assert len(inside["key"]) == 64


async def test_interrupt_stops_a_busy_loop(
        kernel: tuple[AsyncKernelManager, AsyncKernelClient]) -> None:
    km, kc = kernel
    await run(kc, "kept = 41")
    # stop_on_error=False: else ipykernel aborts requests that arrive just after the error
    msg_id = kc.execute("while True: pass", stop_on_error=False)
    await asyncio.sleep(1.0)
    await km.interrupt_kernel()
    async with asyncio.timeout(20):
        while True:
            reply = await kc.get_shell_msg()
            if reply["parent_header"].get("msg_id") == msg_id:
                break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    content, out = await run(kc, "print(kept + 1)")
    assert content["status"] == "ok" and out == "42\n"  # same kernel, state kept


async def test_restart_gives_a_fresh_kernel_in_the_same_box(
        kernel: tuple[AsyncKernelManager, AsyncKernelClient],
        engine: docker.DockerClient) -> None:
    km, kc = kernel
    (before,) = provisioner_containers(engine)
    _, uid = await run(kc, "x = 1\nopen('/home/sandbox/note.txt', 'w').write('kept')\n"
                           "import os; print(os.getuid())")
    assert int(uid) >= UID_BASE  # the kernel's own uid, kept across the restart
    await km.restart_kernel()
    await kc.wait_for_ready(timeout=60)
    content, out = await run(kc, "import os\nprint('x' in globals(), os.getuid(), "
                                 "open('/home/sandbox/note.txt').read())")
    assert content["status"] == "ok" and out == f"False {uid.strip()} kept\n"
    (after,) = provisioner_containers(engine)
    assert after.id == before.id  # restarted in place: files kept, variables gone
    assert await km.is_alive()


async def test_a_dead_kernel_is_noticed_and_restart_recovers(
        kernel: tuple[AsyncKernelManager, AsyncKernelClient],
        engine: docker.DockerClient) -> None:
    km, kc = kernel
    km.stop_restarter()  # this test restarts by hand
    (before,) = provisioner_containers(engine)
    await run(kc, "open('/home/sandbox/before-death.txt', 'w').write('kept')")
    kc.execute("import os; os._exit(3)")
    async with asyncio.timeout(20):
        while await km.is_alive():
            await asyncio.sleep(0.1)
    assert km.provisioner is not None and await km.provisioner.poll() == 3
    # What Jupyter's auto-restarter calls: kill() without the restart flag.
    await km.restart_kernel(now=True)
    await kc.wait_for_ready(timeout=60)
    content, out = await run(kc, "print(6 * 7, open('/home/sandbox/before-death.txt').read())")
    assert content["status"] == "ok" and out == "42 kept\n"
    (after,) = provisioner_containers(engine)
    assert after.id == before.id


async def test_shutdown_removes_container_and_run_dir(
        kernelspec: Path, engine: docker.DockerClient) -> None:
    km = AsyncKernelManager(kernel_name="agentbox")
    await km.start_kernel()
    prov = km.provisioner
    assert isinstance(prov, AgentBoxProvisioner) and prov.run_dir is not None
    run_dir = prov.run_dir
    assert run_dir.is_dir() and len(provisioner_containers(engine)) == 1
    await km.shutdown_kernel()  # polite: shutdown_request, then the container goes
    assert not run_dir.exists() and not provisioner_containers(engine)
    assert not await km.is_alive() and not prov.has_process
    await prov.cleanup()  # idempotent (nbclient, for one, cleans up twice)


async def test_removed_container_is_noticed_and_restart_replaces_it(
        kernel: tuple[AsyncKernelManager, AsyncKernelClient],
        engine: docker.DockerClient) -> None:
    km, kc = kernel
    km.stop_restarter()
    (before,) = provisioner_containers(engine)
    before.remove(force=True)
    assert not await km.is_alive()
    await km.restart_kernel(now=True)
    await kc.wait_for_ready(timeout=60)
    content, out = await run(kc, "print('back')")
    assert content["status"] == "ok" and out == "back\n"
    (after,) = provisioner_containers(engine)
    assert after.id != before.id


async def test_kernelspec_env_is_the_only_environment_passed(
        kernelspec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = json.loads((kernelspec / "kernel.json").read_text())
    spec["env"] = {"GREETING": "hello from ${AGENTBOX_TEST_WHO}"}
    (kernelspec / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("AGENTBOX_TEST_WHO", "the host")
    km = AsyncKernelManager(kernel_name="agentbox")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        content, out = await run(kc, "import os\nprint(os.environ.get('GREETING'), "
                                     "'AGENTBOX_TEST_WHO' in os.environ)")
        assert content["status"] == "ok" and out == "hello from the host False\n"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def test_failed_start_leaves_nothing_behind(kernelspec: Path) -> None:
    # Docker refuses an unknown network at once (an unknown image would be pulled first).
    config = Config({"AgentBoxProvisioner": {
        "sandbox_config": {"network": "agentbox-test-no-such-network"}}})
    km = AsyncKernelManager(kernel_name="agentbox", config=config)
    try:
        with pytest.raises(SessionStartError, match="no-such-network"):
            await km.start_kernel()
        prov = km.provisioner
        assert isinstance(prov, AgentBoxProvisioner)
        assert prov.run_dir is None and not prov.has_process
    finally:
        await km.cleanup_resources()
