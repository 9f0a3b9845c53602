"""A jupyter_client kernel provisioner that runs each kernel in an Agent Box container.

With the kernelspec that ``agentbox kernelspec install`` writes, JupyterLab,
nbclient, papermill and every other Jupyter front end run their cells inside
the same hardened container a :class:`~sandbox.AsyncSession` uses (no network,
read-only root, unprivileged uid, limits), with no other change::

    agentbox kernelspec install --user
    jupyter lab                      # pick "Python 3 (Agent Box sandbox)"
    papermill in.ipynb out.ipynb -k agentbox

How it works (the long form, step by step: docs/provisioner.md). The kernelspec's
``metadata.kernel_provisioner`` names this class, so the KernelManager asks it, not a
``Popen``, to run the kernel. ``pre_launch`` makes a run directory per kernel (mode
0700, bind-mounted at ``/run/kernel``) and points the manager at its ``ipc`` sockets
(:mod:`sandbox.integrations._provisioner_config`); ``launch_kernel`` starts the
container, whose init starts the kernel, and returns once the kernel answers on its
control channel. ``poll``, ``send_signal``, ``kill`` and ``terminate`` go through
``agentbox-init`` (the engine when init does not answer). A restart keeps the
container (files kept, variables lost; socket paths and key unchanged); only
``cleanup(restart=False)``, or an ``atexit`` hook when the front end never calls it,
removes the container and the run directory. A death the provisioner did not cause is
logged at warning level with its reason.

Settings: the provisioner's traits, from the kernelspec
(``metadata.kernel_provisioner.config``, e.g. ``{"memory_mb": 2048}``) or from
Jupyter config (``c.AgentBoxProvisioner.cpus = 2``); ``sandbox_config`` takes any
other :class:`~sandbox.SandboxConfig` field. The kernelspec's ``env`` stanza is
the only environment passed to the kernel (validated like ``SandboxConfig.env``);
nothing else of the host's environment reaches it.
"""

from __future__ import annotations

import asyncio
import atexit
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo

from sandbox._box import INIT_SIGNALS, Box, box_labels, death_from_state
from sandbox._config import SandboxConfig, default_base_dir, make_config
from sandbox._endpoint import PORTS, wait_for_sockets
from sandbox._exceptions import SandboxError, SessionStartError
from sandbox._exit_call import engine_call, run_in_own_thread
from sandbox._kernel import probe_control
from sandbox._models import KernelDeath
from sandbox._rundir import make_run_dir, remove_run_dir
from sandbox._runtime.base import Runtime
from sandbox._uids import UidLease, for_session
from sandbox.integrations._provisioner_config import (
    CONNECTION_FILE,
    DISPLAY_NAME,
    KERNEL_NAME,
    LABEL_KERNEL_ID,
    PROVISIONER_NAME,
    SOCKET_PREFIX,
    ProvisionerSettings,
    box_info,
    restore_box,
)

PING_TIMEOUT_S = 2.0

PING_TIMEOUT_S = 2.0


class AgentBoxProvisioner(ProvisionerSettings):
    """Runs the kernel in a hardened Agent Box container (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime: Runtime | None = None  # default: the process-wide Docker runtime
        self.session_id: str | None = None
        self.run_dir: Path | None = None
        self._box: Box | None = None  # the container and its init; with the run dir
        self._config: SandboxConfig | None = None
        self._uid_lease: UidLease | None = None
        self._exit_code: int | None = None
        self._stopping = False  # we asked the kernel to end: its exit is no death to report

    # -- state ------------------------------------------------------------------------
    @property
    def has_process(self) -> bool:
        """True while a container for this kernel exists."""
        return self.container_id is not None

    @property
    def container_id(self) -> str | None:
        return self._box.container_id if self._box is not None else None

    @property
    def _generation(self) -> int:
        """agentbox-init's count of kernels started in the container."""
        return self._box.init_generation if self._box is not None else 0

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            from sandbox._runtime.dockerd import default_runtime

            self.runtime = default_runtime()
        return self.runtime

    def _make_box(self, config: SandboxConfig) -> Box:
        """The box of this kernel's run dir (one per run dir, kept across restarts)."""
        from sandbox._image import image_tag

        assert self.run_dir is not None and self.session_id is not None
        extra = ({LABEL_KERNEL_ID: self.kernel_id}
                 if isinstance(self.kernel_id, str) and self.kernel_id else None)
        return Box(self._runtime(), config, self.run_dir, name=self.session_id,
                   image=config.image or image_tag(),
                   labels=box_labels(self.session_id, self.run_dir, extra), engine=engine_call)

    # -- launch -----------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self._manager()
        kwargs.pop("transport_encryption", None)  # CurveZMQ: not declared by the kernelspec
        extra_arguments: list[str] = kwargs.pop("extra_arguments", [])
        kwargs = await super().pre_launch(**kwargs)  # kernelspec env substitutions
        full_env: dict[str, str] = kwargs.get("env") or {}
        spec_env = self.kernel_spec.env if self.kernel_spec is not None else {}
        # Only the kernelspec's own env stanza reaches the sandbox, never the host's.
        env = {name: str(full_env.get(name, value)) for name, value in spec_env.items()}
        config = self.build_config(env)
        fresh = self.run_dir is None
        if fresh:  # a host uid of the kernel's own (sandbox/_uids.py), kept across restarts
            self._release_uid()
            config, self._uid_lease = for_session(config)
        elif self._config is not None:
            config = config.with_(user=self._config.user)  # the run dir is that uid's
        self._config = config

        if fresh:
            self.session_id = f"s-{secrets.token_hex(6)}"
            self.run_dir = default_base_dir() / self.session_id
            make_run_dir(self.run_dir, config.uid, config.gid)
        assert self.run_dir is not None
        if self._box is None:
            self._box = self._make_box(config)
        else:  # a restart: the next container (if one is needed) takes the new settings
            self._box.config = config
        try:
            self._wire_manager(km, config, fresh=fresh,
                               session_name=full_env.get("JPY_SESSION_NAME"))
            kwargs["cmd"] = km.format_kernel_cmd(extra_arguments=extra_arguments)
        except BaseException:
            if fresh:
                await self._teardown()
            raise
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the kernel (in place after a restart, else in a new container); return
        once its sockets exist. ``cmd`` is not run: the container's init starts the kernel."""
        config = self._config
        if config is None or self.run_dir is None:
            raise RuntimeError("launch_kernel called before pre_launch")
        deadline = time.monotonic() + config.start_timeout_s
        self._exit_code = None
        self._stopping = False
        try:
            if not await self._start_in_place():
                await self._start_container()
            await self._wait_for_sockets(deadline)
            await self._wait_for_control(deadline)
        except BaseException:
            await self._teardown()
            raise
        self.log.debug("kernel %s runs in container %s (run dir %s)", self.kernel_id,
                       (self.container_id or "")[:12], self.run_dir)
        return self.connection_info

    async def _start_in_place(self) -> bool:
        """Kill every process in the existing container, start a fresh kernel there.
        False when there is no container or its init does not cooperate."""
        box = self._box
        if box is None or box.container_id is None:
            return False

        def prepare() -> str:
            self._remove_sockets()
            return CONNECTION_FILE

        try:
            await box.restart_kernel(prepare)
        except SandboxError as exc:
            self.log.warning("kernel %s: restart in place failed (%s); starting a new "
                             "container", self.kernel_id, exc)
            return False
        return True

    async def _start_container(self) -> None:
        assert self._box is not None
        await self._remove_container()
        self._remove_sockets()
        await self._box.launch(CONNECTION_FILE)
        # The container must not outlive its owner even when the front end never calls
        # cleanup (jupyter console only sends shutdown_request before it exits).
        atexit.register(self._teardown_at_exit)

    async def _wait_for_sockets(self, deadline: float) -> None:
        async def exited() -> bool:
            return await self.poll() is not None

        def late() -> Exception:
            return SessionStartError("the sandboxed kernel did not bind its sockets before "
                                     "the start deadline (start_timeout_s)",
                                     session_id=self.session_id)

        def gone() -> Exception:
            return SessionStartError("the sandboxed kernel exited while starting",
                                     session_id=self.session_id)

        await wait_for_sockets(self._socket_paths(), deadline, exited=exited, check_every=0.25,
                               on_deadline=late, on_exit=gone)

    async def _wait_for_control(self, deadline: float) -> None:
        assert self.run_dir is not None
        km = self._manager()
        key = km.session.key

        async def exited() -> bool:
            return await self.poll() is not None

        await probe_control(self.run_dir / f"{SOCKET_PREFIX}-{PORTS['control_port']}",
                            key if isinstance(key, bytes) else str(key).encode(),
                            km.session.signature_scheme, self.container_id, deadline,
                            exited=exited, session_id=self.session_id)

    # -- process-like interface ----------------------------------------------------------
    async def poll(self) -> int | None:
        """None while the kernel runs, else its exit code (negative: killed by a signal)."""
        box = self._box
        if box is None or box.container_id is None:
            return self._exit_code if self._exit_code is not None else 0
        try:
            reply = await box.init.request({"op": "ping"}, timeout=PING_TIMEOUT_S)
        except SandboxError:  # InitUnavailable: ask the engine
            try:
                state = await box.state()
            except SandboxError:
                return None  # the engine hiccuped: not known to be dead
            if state.running:
                return None  # init busy (e.g. killing a fork bomb): not known to be dead
            code = state.exit_code if state.exit_code is not None else -int(signal.SIGKILL)
            if self._exit_code is None:
                self._exit_code = code
                self._report_death(death_from_state(state, box.config.memory_mb))
            return code
        if reply.get("alive") is True:
            return None
        return await self._exit_status()

    async def _exit_status(self) -> int:
        if self._exit_code is None:
            code = 1
            death = await self._box.exit_report(PING_TIMEOUT_S) if self._box else None
            if death is None:
                death = KernelDeath(reason="the kernel stopped (agentbox-init gave no exit "
                                           "report)")
            elif death.exit_code is not None:
                code = death.exit_code
            elif death.signal is not None:
                code = -death.signal
            self._exit_code = code
            self._report_death(death)
        return self._exit_code

    def _report_death(self, death: KernelDeath) -> None:
        """A warning with the reason, unless we ended the kernel ourselves: Jupyter
        front ends only say "the kernel died", the server log says why."""
        if self._stopping:
            return
        self.log.warning("kernel %s (sandbox %s) died: %s", self.kernel_id, self.session_id,
                         death.reason)

    async def wait(self) -> int | None:
        while True:
            code = await self.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.1)

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel's process group through init (``docker kill -s`` if it fails)."""
        box = self._box
        if box is None or box.container_id is None or signum == 0:
            return
        if signum in INIT_SIGNALS and await box.signal_kernel(signum) is not None:
            return  # sent, or no kernel is running: nothing to signal
        await box.signal_container(signum)

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._stopping = True
        await super().shutdown_requested(restart=restart)

    async def kill(self, restart: bool = False) -> None:
        """Kill every process in the container through init and keep the container,
        whatever *restart* says: jupyter_client's ``restart_kernel(now=True)`` (the
        auto-restarter's call after a death) passes no restart flag, and the files must
        survive it. ``cleanup(restart=False)`` removes the container; so does this, when
        init does not answer (nothing else could end the processes)."""
        if self._box is None or self._box.container_id is None:
            return
        self._stopping = True
        if not await self._box.kill_processes():
            await self._remove_container()

    async def terminate(self, restart: bool = False) -> None:
        """SIGTERM to the kernel; the container is removed when init does not answer."""
        if self._box is None or self._box.container_id is None:
            return
        self._stopping = True
        if await self._box.signal_kernel(signal.SIGTERM) is None and not restart:
            await self._remove_container()

    async def cleanup(self, restart: bool = False) -> None:
        """Restart: keep the container and run dir. Else remove both (idempotent)."""
        if restart:
            if self.run_dir is not None:
                self._remove_sockets()
            return
        await self._teardown()

    async def _remove_container(self) -> None:
        box = self._box
        container = box.container_id if box is not None else None
        if box is None or container is None:
            return
        if self._exit_code is None:
            self._exit_code = -int(signal.SIGKILL)
        try:
            await box.remove()
        except SandboxError as exc:
            box.container_id = None  # not ours to retry: `agentbox gc` does
            self.log.warning("kernel %s: container %s not removed (%s); `agentbox gc` will "
                             "remove it once this process is gone", self.kernel_id,
                             container[:12], exc)

    async def _teardown(self) -> None:
        atexit.unregister(self._teardown_at_exit)  # or every kernel stays referenced
        run_dir = self.run_dir
        try:
            await self._remove_container()
        finally:
            self.run_dir = None
            self.session_id = None
            self._box = None
            if run_dir is not None:
                remove_run_dir(run_dir)
            self._release_uid()

    def _teardown_at_exit(self) -> None:
        """atexit: remove what the front end left (a no-op after ``cleanup``)."""
        if self.container_id is None and self.run_dir is None:
            return
        self._stopping = True
        self.log.debug("kernel %s: removing its container at interpreter exit", self.kernel_id)
        try:
            run_in_own_thread(self._teardown)
        except Exception as exc:  # at exit: say it; `agentbox gc` is the backstop
            self.log.warning("kernel %s: sandbox not removed at exit (%s); `agentbox gc` "
                             "removes it", self.kernel_id, exc)

    def _release_uid(self) -> None:
        lease, self._uid_lease = self._uid_lease, None
        if lease is not None:
            lease.release()

    # -- persistence ----------------------------------------------------------------------
    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update({
            "session_id": self.session_id,
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            **box_info(self._box),
            "sandbox_config": (self._config.model_dump(mode="json")
                               if self._config is not None else None),
        })
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        run_dir = provisioner_info.get("run_dir")
        self.run_dir = Path(run_dir) if isinstance(run_dir, str) else None
        self.session_id = provisioner_info.get("session_id")
        config = provisioner_info.get("sandbox_config")
        self._config = make_config(config) if isinstance(config, dict) else None
        self._box = None
        if self.run_dir is None or self.session_id is None:
            return
        self._box = self._make_box(self._config or make_config({}))
        restore_box(self._box, provisioner_info)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        if self._config is not None:
            return max(recommended, self._config.start_timeout_s)
        return recommended


__all__ = ["DISPLAY_NAME", "KERNEL_NAME", "LABEL_KERNEL_ID", "PROVISIONER_NAME", "AgentBoxProvisioner"]
