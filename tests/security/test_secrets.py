"""Nothing secret of the host reaches the box, and the one secret the box holds (its
kernel's HMAC key) is fresh for every session and every kernel, and shown nowhere else."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import Session
from tests.security.conftest import container_attrs, open_box, probe

CANARY = f"canary-{secrets.token_hex(8)}"
HOST_SECRETS = {
    "AGENTBOX_CANARY_SECRET": CANARY,
    "AGENTBOX_API_KEYS": f"{CANARY}-api-key",
    "AWS_SECRET_ACCESS_KEY": f"{CANARY}-aws",
    "OPENAI_API_KEY": f"sk-{CANARY}",
}
# The kernel's whole environment: the image's ENV, Docker's HOSTNAME, init's autostart
# file name, and what ipykernel sets for itself. Nothing from the host.
EXPECTED_ENV = {"AGENTBOX_AUTOSTART", "HOME", "HOSTNAME", "IPYTHONDIR", "LANG", "MPLBACKEND",
                "MPLCONFIGDIR", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
                "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "GIT_PAGER", "PAGER", "TERM",
                "PYDEVD_USE_FRAME_EVAL", "USER", "LOGNAME"}

SEARCH = r"""
import errno, glob, json, os, subprocess
needle = %r.encode()
try:
    pid1_environ = open("/proc/1/environ", "rb").read().decode(errors="replace")
except OSError as exc:
    pid1_environ = "unreadable: " + errno.errorcode.get(exc.errno, str(exc.errno))
env_hits = [k for k, v in os.environ.items() if needle in (k + "=" + v).encode()]
child_env = subprocess.run(["env"], capture_output=True).stdout
environ_read, environ_hits = [], []
for p in glob.glob("/proc/[0-9]*/environ") + ["/proc/self/environ", "/proc/1/environ"]:
    try:
        data = open(p, "rb").read()
    except OSError:
        continue
    environ_read.append(p)
    if needle in data:
        environ_hits.append(p)
open("/tmp/grep-control.txt", "w").write("grep-control " + %r)
files_read, file_hits = 0, []
budget = 4000
for root in ("/etc", "/tmp", "/home", "/run/kernel", "/opt/agentbox", "/dev/shm"):
    for top, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            if budget == 0 or os.path.islink(path) or not os.path.isfile(path):
                continue
            budget -= 1
            try:
                with open(path, "rb") as fh:
                    data = fh.read(1 << 20)
            except OSError:
                continue
            files_read += 1
            if needle in data or b"grep-control " + %r.encode() in data:
                file_hits.append(path)
cmdlines = b"".join(open(p, "rb").read() for p in glob.glob("/proc/[0-9]*/cmdline"))
print(json.dumps({"env_hits": env_hits, "env_keys": sorted(os.environ), "child_env": needle in child_env,
                  "environ_read": sorted(set(environ_read)), "environ_hits": environ_hits,
                  "files_read": files_read, "file_hits": file_hits, "cmdline": needle in cmdlines,
                  "pid1_environ": pid1_environ}))
"""

READ_KEY = r"""
import glob, json, os
files = sorted(glob.glob("/run/kernel/kernel-*.json"))
print(json.dumps({"files": files, "key": json.load(open(files[-1]))["key"],
                  "mode": oct(os.stat(files[-1]).st_mode & 0o777)}))
"""


@pytest.fixture(scope="module")
def box(runtime: str) -> Iterator[Session]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in HOST_SECRETS.items():
            mp.setenv(name, value)
        assert os.environ["AGENTBOX_CANARY_SECRET"] == CANARY
        with open_box(runtime, env={"AGENTBOX_VISIBLE": "allowed"}) as session:
            yield session


@pytest.fixture(scope="module")
def search(box: Session) -> dict[str, Any]:
    marker = secrets.token_hex(6)
    found: dict[str, Any] = probe(box, SEARCH % (CANARY, marker, marker), timeout=120)
    found["marker"] = marker
    return found


def test_canary_is_not_in_the_kernels_environment(search: dict[str, Any]) -> None:
    assert search["env_hits"] == []
    assert search["child_env"] is False
    assert set(search["env_keys"]) - {"AGENTBOX_VISIBLE"} <= EXPECTED_ENV
    assert "AGENTBOX_VISIBLE" in search["env_keys"]  # the explicit allow-list gets through
    assert not set(search["env_keys"]) & set(HOST_SECRETS)


def test_canary_is_in_no_process_environment(search: dict[str, Any], runtime: str) -> None:
    assert search["environ_hits"] == []
    # Control: every process's environ the sandbox may read was really read.
    assert len(search["environ_read"]) >= 2 and "/proc/self/environ" in search["environ_read"]
    if runtime == "runc":
        # agentbox-init is non-dumpable: its /proc files are closed to the sandbox user.
        assert "/proc/1/environ" not in search["environ_read"]
        assert search["pid1_environ"] in ("unreadable: EACCES", "unreadable: EPERM")
    else:
        # gVisor's /proc still shows a non-dumpable process's environ; it holds nothing.
        assert "/proc/1/environ" in search["environ_read"]
        assert "AGENTBOX_AUTOSTART=kernel-" in search["pid1_environ"]
        assert CANARY not in search["pid1_environ"]
    assert search["cmdline"] is False


def test_canary_is_in_no_readable_file(search: dict[str, Any]) -> None:
    # Control: the same grep finds a marker planted in /tmp, so it really looked.
    assert search["file_hits"] == ["/tmp/grep-control.txt"]
    assert search["files_read"] > 20


def test_the_engine_was_given_nothing_of_the_hosts_environment(box: Session,
                                                              engine: Any) -> None:
    attrs = container_attrs(engine, box)
    # What the container is given: its environment and command line. (Labels are the
    # host's bookkeeping, invisible inside; they must not carry the canary either.)
    given = json.dumps({"env": attrs["Config"]["Env"], "cmd": attrs["Config"]["Cmd"],
                        "entrypoint": attrs["Config"]["Entrypoint"]})
    assert CANARY not in given and CANARY not in json.dumps(attrs["Config"]["Labels"])
    # No value of this (host) process's environment that looks like a secret shows up.
    for name, value in os.environ.items():
        if len(value) >= 12 and name not in ("PATH", "HOME", "PWD", "OLDPWD", "SHELL", "TERM",
                                             "LANG", "LC_ALL", "HOSTNAME", "PYTHONPATH"):
            assert value not in given, name
    logs = engine.api.logs(box.info.container_id)
    assert CANARY.encode() not in logs


INIT_KEY_REACH = r"""
import ctypes, errno, json, os
found = {"key_file": os.path.lexists("/run/kernel/init.key"), "texts": {}}
for name in ("mem", "environ", "cmdline"):
    try:
        with open(f"/proc/1/{name}", "rb") as fh:
            if name == "mem":
                fh.seek(0x400000)  # (any address: the open is what is refused)
            found["texts"][name] = fh.read(1 << 16).hex()
        found[name] = "read"
    except OSError as exc:
        found[name] = errno.errorcode.get(exc.errno, str(exc.errno))
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
ok = libc.ptrace(16, 1, None, None) == 0  # PTRACE_ATTACH
found["ptrace"] = "attached" if ok else errno.errorcode.get(ctypes.get_errno(), "?")
if ok:
    libc.ptrace(17, 1, None, None)  # PTRACE_DETACH
print(json.dumps(found))
"""


def test_the_init_key_is_out_of_the_kernels_reach(box: Session, runtime: str) -> None:
    # agentbox-init signs its answers with a key the host gave it; code in the box that
    # learnt it could pass for init (tests/security/test_protocol.py's impostor).
    key = box._async._init.key
    assert key is not None and len(key) == 32
    found = probe(box, INIT_KEY_REACH)
    assert found["key_file"] is False, found  # read and deleted by init at boot
    # Its memory cannot be read, and it cannot be traced (init is non-dumpable).
    assert found["mem"] in ("EACCES", "EPERM"), found
    assert found["ptrace"] in ("EACCES", "EPERM"), found
    # The key is in neither its environment nor its command line, readable or not.
    for name in ("environ", "cmdline"):
        assert found[name] in ("read", "EACCES", "EPERM"), found
        assert key.hex() not in bytes.fromhex(found["texts"].get(name, "")).decode(
            errors="replace"), name
    if runtime == "runc":
        assert found["environ"] in ("EACCES", "EPERM"), found


def test_the_kernel_key_is_fresh_per_session_and_per_restart(box: Session, runtime: str,
                                                            engine: Any) -> None:
    first = probe(box, READ_KEY)
    box.restart()
    second = probe(box, READ_KEY)
    with open_box(runtime) as other:
        third = probe(other, READ_KEY)
        other_dir = other._async.run_dir
        other_host_files = sorted(p.name for p in other_dir.iterdir())
    keys = [first["key"], second["key"], third["key"]]
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)  # 256-bit
    assert len(set(keys)) == 3
    # A restart retires the old connection file: only the live kernel's is there.
    assert len(first["files"]) == 1 and len(second["files"]) == 1
    assert first["files"] != second["files"]
    assert all(f["mode"] == "0o600" for f in (first, second, third))
    assert any(re.fullmatch(r"kernel-1-[0-9a-f]{8}\.json", n) for n in other_host_files)
    # From the host: the key lives in that one file (owner-only), and nowhere the engine
    # keeps or shows: not in the container's config, labels or logs.
    run_dir = box._async.run_dir
    live = run_dir / second["files"][0].rsplit("/", 1)[1]
    st = os.stat(live)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == box.config.uid
    assert json.loads(live.read_text())["key"] == second["key"]
    attrs = json.dumps(container_attrs(engine, box))
    logs = engine.api.logs(box.info.container_id)
    for key in keys:
        assert key not in attrs
        assert key.encode() not in logs
