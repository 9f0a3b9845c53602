"""agentbox-init: PID 1 of a sandbox container.

It exists so that a kernel can be killed and started again without losing the
container (and with it the session's working directory on tmpfs), and so that
the host learns at once, and why, when a kernel dies.

- Reaps every zombie (orphans of the sandboxed code are reparented here).
- Starts the IPython kernel as its child, in a session of its own.
- Answers one JSON request per connection on a Unix socket in the
  bind-mounted run directory (``/run/kernel/init.sock``)::

      {"op": "ping"}                      -> {"ok": true, "generation": g, "alive": bool}
      {"op": "start", "connection_file": "kernel-2.json"}
                                          -> {"ok": true, "pid": p, "generation": g}
      {"op": "signal", "signum": 2}       -> {"ok": true}     (to the kernel's group)
      {"op": "kill"}                      -> {"ok": true, "exit": {...}, "remaining": n}
      {"op": "wait", "generation": g}     -> {"ok": true, "exit": {...}}  once g ended

  ``kill`` ends every process in the container but this one, which is how a
  fork bomb is cleaned up without any new process being needed.
- SIGINT is forwarded to the kernel's process group, so ``docker kill -s INT``
  interrupts a cell; SIGTERM ends everything and exits.

It runs with the sandbox's uid and privileges, like the code it supervises:
the host treats its answers as untrusted and never waits on it without a
deadline. The sandboxed code can unlink ``init.sock`` and listen there itself,
so every answer carries ``mac``: an HMAC-SHA256, keyed with ``init.key`` (which
the host writes for each container and init reads and deletes at boot, before
the kernel exists), over the request's ``nonce`` and the answer. Init makes
itself non-dumpable, so the kernel (same uid) can neither ptrace it nor read
its memory or environment to learn the key. Standard library only; single-threaded (no thread or process is
created except the kernel), so it keeps answering when the pids limit is hit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import time
from typing import Any

RUN_DIR = os.environ.get("AGENTBOX_RUN_DIR", "/run/kernel")
SOCKET_PATH = os.path.join(RUN_DIR, "init.sock")
KEY_PATH = os.path.join(RUN_DIR, "init.key")
MAX_REQUEST_BYTES = 16 * 1024
MAX_CONNECTIONS = 32
CONNECTION_IDLE_S = 10.0
KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f"]
ALLOWED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGQUIT}
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills() -> int | None:
    """The cgroup's OOM-kill counter (v2 or v1), None where the runtime hides it."""
    for path in OOM_FILES:
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def other_pids() -> list[int]:
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]


def seed_matplotlib() -> None:
    """Give kernels a writable matplotlib dir holding the font cache built into the image.

    Without it the first ``import matplotlib.pyplot`` spends seconds building one.
    """
    src, dst = "/opt/agentbox/mplconfig", "/tmp/.matplotlib"
    try:
        if not os.path.exists(dst):
            shutil.copytree(src, dst)
        os.environ["MPLCONFIGDIR"] = dst
    except OSError:
        pass  # no writable /tmp: keep the image's default


def make_undumpable() -> None:
    """PR_SET_DUMPABLE 0: no ptrace, no /proc/1/{mem,environ} for the same uid."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError) as exc:
        print(f"agentbox-init: cannot make itself non-dumpable: {exc}", file=sys.stderr)


def read_key() -> bytes | None:
    """The host's key for this container; the file is gone once read."""
    try:
        with open(KEY_PATH, "rb") as fh:
            key = bytes.fromhex(fh.read(256).decode("ascii"))
    except (OSError, ValueError) as exc:
        print(f"agentbox-init: no usable {KEY_PATH} ({exc}); the host will not trust "
              "its answers", file=sys.stderr)
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(KEY_PATH)
    return key


def sign(key: bytes | None, nonce: str, reply: dict[str, Any]) -> dict[str, Any]:
    """``reply`` with its mac (sandbox/_kernel.py init_mac checks the same)."""
    if key is None:
        return reply
    body = json.dumps(reply, sort_keys=True, separators=(",", ":"))
    mac = hmac.new(key, f"{nonce}\n{body}".encode(), hashlib.sha256).hexdigest()
    return {**reply, "mac": mac}


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.nonce = ""
        self.since = time.monotonic()
        self.waiting_for: int | None = None


class Init:
    def __init__(self) -> None:
        make_undumpable()
        self.key = read_key()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.kernel_pid: int | None = None
        self.generation = 0
        self.exits: dict[int, dict[str, Any]] = {}
        self.oom_at_start: int | None = None
        self.stopping = False

        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self.wake_r = rfd
        signal.set_wakeup_fd(wfd)
        self.sel.register(rfd, selectors.EVENT_READ, "wake")
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, self._forward)
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_PATH)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(SOCKET_PATH)
        os.chmod(SOCKET_PATH, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")

    # -- signals -----------------------------------------------------------------
    def _forward(self, signum: int, _frame: object) -> None:
        if self.kernel_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.kernel_pid, signum)

    def _terminate(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    # -- kernel lifecycle --------------------------------------------------------
    def start(self, connection_file: str) -> dict[str, Any]:
        if self.kernel_pid is not None:
            return {"ok": False, "error": "a kernel is running"}
        name = os.path.basename(connection_file)
        path = os.path.join(RUN_DIR, name)
        if name != connection_file or not os.path.isfile(path):
            return {"ok": False, "error": f"no connection file {connection_file!r}"}
        self.oom_at_start = oom_kills()
        try:
            pid = os.fork()
        except OSError as exc:
            return {"ok": False, "error": f"fork failed: {exc}"}
        if pid == 0:  # child: become the kernel
            try:
                os.setsid()
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP,
                            signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                home = os.environ.get("HOME", "/")
                os.chdir(home if os.path.isdir(home) else "/")
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.execv(KERNEL_ARGV[0], [*KERNEL_ARGV, path])
            finally:
                os._exit(127)
        self.generation += 1
        self.kernel_pid = pid
        return {"ok": True, "pid": pid, "generation": self.generation}

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.kernel_pid:
                self._kernel_exited(status)

    def _kernel_exited(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        oom_now = oom_kills()
        oom_delta = (
            oom_now - self.oom_at_start
            if oom_now is not None and self.oom_at_start is not None
            else None
        )
        sig = -code if code < 0 else None
        info = {
            "generation": self.generation,
            "pid": self.kernel_pid,
            "exit_code": code if code >= 0 else None,
            "signal": sig,
            "oom_kills": oom_delta,
            "oom_killed": bool(sig == signal.SIGKILL and oom_delta),
        }
        self.exits = {self.generation: info}
        self.kernel_pid = None
        for fd, conn in list(self.conns.items()):
            if conn.waiting_for == self.generation:
                self._reply(fd, {"ok": True, "exit": info})

    def kill_all(self, deadline_s: float = 3.0) -> dict[str, Any]:
        if self.kernel_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.kernel_pid, signal.SIGKILL)
        end = time.monotonic() + deadline_s
        remaining = other_pids()
        while remaining and time.monotonic() < end:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(-1, signal.SIGKILL)
            self.reap()
            time.sleep(0.005)
            self.reap()
            remaining = other_pids()
        self.reap()
        return {"ok": True, "exit": self.exits.get(self.generation), "remaining": len(remaining)}

    # -- requests ----------------------------------------------------------------
    def handle(self, fd: int, conn: Conn, request: Any) -> None:
        if not isinstance(request, dict):
            self._reply(fd, {"ok": False, "error": "request must be a JSON object"})
            return
        conn.nonce = str(request.get("nonce", ""))[:256]
        op = request.get("op")
        if op == "ping":
            self._reply(fd, {"ok": True, "generation": self.generation,
                             "alive": self.kernel_pid is not None})
        elif op == "start":
            self._reply(fd, self.start(str(request.get("connection_file", ""))))
        elif op == "signal":
            signum = request.get("signum")
            if signum not in ALLOWED_SIGNALS:
                self._reply(fd, {"ok": False, "error": f"signal {signum!r} not allowed"})
            elif self.kernel_pid is None:
                self._reply(fd, {"ok": False, "error": "no kernel running"})
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.kernel_pid, signum)
                self._reply(fd, {"ok": True})
        elif op == "kill":
            self._reply(fd, self.kill_all())
        elif op == "wait":
            gen = request.get("generation")
            if not isinstance(gen, int):
                self._reply(fd, {"ok": False, "error": "generation must be an integer"})
            elif gen in self.exits:
                self._reply(fd, {"ok": True, "exit": self.exits[gen]})
            elif gen != self.generation or self.kernel_pid is None:
                self._reply(fd, {"ok": False, "error": f"no such generation {gen}"})
            else:
                conn.waiting_for = gen
        else:
            self._reply(fd, {"ok": False, "error": f"unknown op {op!r}"})

    def _reply(self, fd: int, payload: dict[str, Any]) -> None:
        conn = self.conns.pop(fd, None)
        if conn is None:
            return
        with contextlib.suppress(OSError):
            self.sel.unregister(conn.sock)
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(json.dumps(sign(self.key, conn.nonce, payload)).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.sock.close()

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                self.sel.unregister(conn.sock)
            conn.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: shed the oldest client
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self.conns:
                    self._drop(min(self.conns, key=lambda f: self.conns[f].since))
                    continue
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                oldest = min(self.conns, key=lambda f: self.conns[f].since)
                self._drop(oldest)
            sock.setblocking(False)
            self.conns[sock.fileno()] = Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, "conn")

    def _read(self, fd: int) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(fd)
            return
        if conn.waiting_for is not None:
            return  # a waiter has nothing more to say
        conn.buf += chunk
        if b"\n" not in conn.buf:
            if len(conn.buf) > MAX_REQUEST_BYTES:
                self._reply(fd, {"ok": False, "error": "request too large"})
            return
        line = conn.buf.split(b"\n", 1)[0]
        try:
            request = json.loads(line)
        except ValueError:
            self._reply(fd, {"ok": False, "error": "request is not JSON"})
            return
        self.handle(fd, conn, request)

    def _expire(self) -> None:
        now = time.monotonic()
        for fd, conn in list(self.conns.items()):
            if conn.waiting_for is None and now - conn.since > CONNECTION_IDLE_S:
                self._drop(fd)

    def run(self) -> int:
        seed_matplotlib()
        autostart = os.environ.get("AGENTBOX_AUTOSTART")
        if autostart:
            result = self.start(autostart)
            if not result["ok"]:
                print(f"agentbox-init: autostart failed: {result['error']}", file=sys.stderr)
        while not self.stopping:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        os.read(self.wake_r, 512)
                elif key.data == "listen":
                    self._accept()
                else:
                    self._read(key.fd)
            self.reap()
            self._expire()
        self.kill_all()
        return 0


if __name__ == "__main__":
    sys.exit(Init().run())
