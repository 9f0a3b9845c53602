"""Seccomp: Docker's default profile, less io_uring and AF_VSOCK (sandbox/_runtime/seccomp.py).

Docker 20.10's own profile lets a box create io_uring instances (measured here: fd 49)
and AF_VSOCK stream sockets (measured: created; vsock is not confined by
``network=none`` on a VM host). Each attack runs from inside a box under runc and
gVisor; the host side checks the profile really is the one the container got.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox._runtime.seccomp import for_runtime, profile
from tests.security.conftest import container_attrs, open_box, probe

pytestmark = pytest.mark.usefixtures("engine")

ATTACKS = r'''
import ctypes, errno, json, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)

def call(nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(nr, *args)
    return rc, errno.errorcode.get(ctypes.get_errno(), "")

params = ctypes.create_string_buffer(120)  # struct io_uring_params
out = {"io_uring_setup": call(425, 8, params),
       "io_uring_enter": call(426, -1, 0, 0, 0, None, 0),
       "io_uring_register": call(427, -1, 0, None, 0)}
for kind in ("SOCK_STREAM", "SOCK_DGRAM"):
    try:
        socket.socket(socket.AF_VSOCK, getattr(socket, kind)).close()
        out["vsock_" + kind] = "created"
    except OSError as exc:
        out["vsock_" + kind] = errno.errorcode.get(exc.errno, str(exc.errno))
for family in ("AF_UNIX", "AF_INET", "AF_INET6"):
    socket.socket(getattr(socket, family)).close()  # what the kernel and libraries need

# The 32-bit ABI from a 64-bit process: socketcall(SYS_SOCKET, {AF_VSOCK, SOCK_STREAM, 0})
# through int 0x80, in a child (a refused architecture kills it with SIGSYS).
INT80 = """
import ctypes, mmap, struct
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
page = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)  # MAP_32BIT
args = page + 2048
ctypes.memmove(args, struct.pack('<III', 40, 1, 0), 12)
code = (b'\\x53\\xb8' + struct.pack('<I', 102) + b'\\xbb' + struct.pack('<I', 1) + b'\\xb9'
        + struct.pack('<I', args) + b'\\xcd\\x80\\x5b\\xc3')  # push rbx; socketcall; pop rbx; ret
ctypes.memmove(page, code, len(code))
print(ctypes.CFUNCTYPE(ctypes.c_int)(page)())
"""
child = subprocess.run([sys.executable, "-c", INT80], capture_output=True, text=True, timeout=30)
out["int80"] = [child.returncode, child.stdout.strip()]
out["status"] = [line.split(":")[1].strip() for line in open("/proc/self/status")
                 if line.startswith("Seccomp:")]
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def seen(runtime: str, engine: Any) -> dict[str, Any]:
    """What the attacks saw from inside one box, plus the container's security options."""
    with open_box(runtime) as box:
        found: dict[str, Any] = probe(box, ATTACKS)
        found["security_opt"] = container_attrs(engine, box)["HostConfig"]["SecurityOpt"]
        found["uid"] = box.config.uid
        # ipykernel, pandas and matplotlib all work under the profile.
        found["stack"] = probe(box, "import json, pandas as pd, matplotlib.pyplot as plt\n"
                               "plt.plot([1, 2]); plt.show()\n"
                               "from concurrent.futures import ThreadPoolExecutor\n"
                               "with ThreadPoolExecutor(4) as ex: n = sum(ex.map(abs, [-1, -2]))\n"
                               "print(json.dumps([int(pd.DataFrame({'a': [1, 2]}).a.sum()), n]))")
    return found


def test_io_uring_cannot_be_set_up(seen: dict[str, Any]) -> None:
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        rc, err = seen[name]
        assert rc == -1 and err in ("EPERM", "ENOSYS"), (name, rc, err)


def test_vsock_sockets_are_refused(seen: dict[str, Any]) -> None:
    assert seen["vsock_SOCK_STREAM"] != "created"
    assert seen["vsock_SOCK_DGRAM"] != "created"


def test_the_32_bit_socketcall_does_not_get_around_the_vsock_rule(
        runtime: str, seen: dict[str, Any]) -> None:
    code, printed = seen["int80"]
    if runtime == "runc":
        assert code == -31  # SIGSYS: the filter knows no 32-bit architecture
    else:
        # gVisor has no 32-bit ABI: int 0x80 runs the 64-bit syscall 102 (getuid).
        assert code == 0 and printed == str(seen["uid"])


def test_the_filter_is_installed(runtime: str, seen: dict[str, Any]) -> None:
    assert seen["status"] == ["2"]  # SECCOMP_MODE_FILTER (gVisor reports its own filter too)
    (opt,) = [o for o in seen["security_opt"] if o.startswith("seccomp=")]
    assert json.loads(opt.removeprefix("seccomp=")) == for_runtime(runtime)
    assert "no-new-privileges:true" in seen["security_opt"]


def test_the_stack_works_under_the_profile(seen: dict[str, Any]) -> None:
    assert seen["stack"] == [3, 3]


def test_profile_is_dockers_less_the_removals() -> None:
    data = profile()
    names = {n for rule in data["syscalls"] for n in rule["names"]}
    assert not names & {"io_uring_setup", "io_uring_enter", "io_uring_register", "socketcall"}
    assert data["defaultAction"] == "SCMP_ACT_ERRNO"
    assert all(arch["subArchitectures"] == [] for arch in data["archMap"])
    sockets = [r for r in data["syscalls"] if "socket" in r["names"]]
    assert sockets == [{**sockets[0], "names": ["socket"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}]
    # The rest is Docker's: the big allow list and its conditional rules are all there.
    assert len(names) >= 400 and {"clone", "mmap", "openat", "socketpair", "ptrace"} <= names
    assert "clone3" in names  # under CAP_SYS_ADMIN only; otherwise ENOSYS (glibc falls back)
