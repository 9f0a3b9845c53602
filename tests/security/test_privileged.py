"""Everything that needs privilege fails: mounts, chroot, device nodes, raw sockets, new
namespaces, the kernel keyring, module loading, setuid and friends — one test per attack,
each on the module's shared box, under each runtime."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest

from sandbox import Session
from tests.security.conftest import open_box, probe

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="raw syscall numbers below are x86_64's")

HARNESS = r"""
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    return libc.syscall(nr, *args)
def outcome(fn):
    ctypes.set_errno(0)
    try:
        ret = fn()
    except OSError as exc:
        return {"failed": True, "errno": errno.errorcode.get(exc.errno, exc.errno)}
    if isinstance(ret, int) and ret == -1:
        return {"failed": True, "errno": errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}
    return {"failed": False, "ret": repr(ret)}
os.makedirs("/tmp/mnt", exist_ok=True)
# In a forked child: single-threaded (as unshare(CLONE_NEWUSER) requires), and whatever
# the attempt changes (a namespace, a root) dies with the child, not with the kernel.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, json.dumps(outcome(lambda: (%s))).encode())
    os._exit(0)
os.close(w)
with os.fdopen(r, "rb") as fh:
    report = fh.read()
os.waitpid(pid, 0)
print(report.decode())
"""

MS_REMOUNT, MS_BIND = 32, 4096
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x10000000, 0x40000000, 0x20000000

# name -> expression run inside. A refusal is EPERM/EACCES (no capability, or Docker's seccomp
# profile) or, under gVisor, the Sentry's own answer for what it does not implement
# (EINVAL, ENOSYS, ENODEV, EOPNOTSUPP), just as final. Per attack, EXTRA_REFUSALS adds the
# errno that comes first in the kernel's checks (EROFS before EPERM on a read-only root).
REFUSED = {"EPERM", "EACCES", "EINVAL", "ENOSYS", "ENODEV", "EOPNOTSUPP", "ENOTSUP"}
ATTACKS: dict[str, str] = {
    "mount tmpfs": 'libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None)',
    "bind mount /": f'libc.mount(b"/", b"/tmp/mnt", None, {MS_BIND}, None)',
    "remount / read-write": f'libc.mount(None, b"/", None, {MS_REMOUNT}, None)',
    "unmount /tmp": 'libc.umount2(b"/tmp", 2)',
    "chroot": 'libc.chroot(b"/tmp")',
    "pivot_root": 'sc(155, b"/tmp", b"/tmp/mnt")',
    # mknod then open: gVisor lets the node be created (the Sentry does not check
    # CAP_MKNOD) but has no such device behind it: opening fails with ENXIO.
    "mknod+open char device (/dev/mem)":
        'os.mknod("/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1)) or os.open("/tmp/mem", os.O_RDWR)',
    "mknod+open block device (host disk)":
        'os.mknod("/tmp/vda", 0o600 | 0o060000, os.makedev(253, 0)) or os.open("/tmp/vda", os.O_RDWR)',
    "raw IP socket": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
    "raw IPv6 socket": "socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)",
    "packet socket": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)",
    # gVisor lets an unprivileged process unshare a mount namespace (Linux would not),
    # but mounting in it is still refused: the pair is the attack.
    "unshare mount namespace, then mount": f'libc.unshare({CLONE_NEWNS}) or libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None)',
    "unshare net namespace": f"libc.unshare({CLONE_NEWNET})",
    "unshare pid namespace": f"libc.unshare({CLONE_NEWPID})",
    "setns into init's mount ns": 'libc.setns(os.open("/proc/1/ns/mnt", os.O_RDONLY), 0)',
    "keyctl (get session keyring)": "sc(250, 0, -3, 0)",
    "add_key": 'sc(248, b"user", b"agentbox", b"secret", 6, -3)',
    "bpf": "sc(321, 0, 0, 0)",
    "perf_event_open": "sc(298, 0, 0, -1, -1, 0)",
    "init_module": "sc(175, 0, 0, b'')",
    "finit_module": 'sc(313, os.open("/bin/true", os.O_RDONLY), b"", 0)',
    "delete_module": 'sc(176, b"ext4", 0)',
    "kexec_load": "sc(246, 0, 0, 0, 0)",
    "reboot": "libc.reboot(0x4321FEDC)",  # RB_POWER_OFF
    "swapon": 'libc.swapon(b"/tmp/swap", 0)',
    "iopl": "sc(172, 3)",
    "ioperm": "sc(173, 0x80, 1, 1)",
    "acct": 'sc(163, b"/tmp/acct")',
    "open_by_handle_at (shocker)": 'sc(304, os.open("/", os.O_RDONLY), (ctypes.c_char * 16)(), 0)',
    "sethostname": 'libc.sethostname(b"pwned", 5)',
    "settimeofday": "libc.settimeofday((ctypes.c_long * 2)(0, 0), None)",
    "setuid(0)": "os.setuid(0)",
    "setgid(0)": "os.setgid(0)",
    "setgroups([0])": "os.setgroups([0])",
    "capset (raise all)": "sc(126, (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)(*[0xffffffff] * 6))",
    "fsopen (new mount API)": 'sc(430, b"tmpfs", 0)',
    "open_tree": 'sc(428, -100, b"/", 1)',
    "chown a root file": 'os.chown("/etc/passwd", 1000, 1000)',
}
EXTRA_REFUSALS = {
    "chown a root file": {"EROFS"},
    "mknod+open char device (/dev/mem)": {"ENXIO"},
    "mknod+open block device (host disk)": {"ENXIO"},
    "setns into init's mount ns": {"ENOENT"},  # gVisor has no /proc/<pid>/ns/mnt at all
}

USER_NAMESPACE = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def err():
    return errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, exc.errno)
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # single-threaded, as unshare(CLONE_NEWUSER) requires
    found = {"unshare": libc.unshare(0x10000000) == 0 or err()}  # CLONE_NEWUSER
    if found["unshare"] is True:
        found["map"] = attempt(lambda: open("/proc/self/uid_map", "w").write(f"0 {os.getuid()} 1"))
        found["uid"] = os.getuid()
        found["mount"] = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 or err()
        found["remount /"] = libc.mount(None, b"/", None, 32, None) == 0 or err()
        found["read shadow"] = attempt(lambda: open("/etc/shadow").read())
        found["write /etc"] = attempt(lambda: open("/etc/evil", "w").close())
        found["setuid(0) outside"] = attempt(lambda: os.setresuid(0, 0, 0))
    os.write(w, json.dumps(found).encode())
    os._exit(0)
os.close(w)
with os.fdopen(r, "rb") as fh:
    report = fh.read()
os.waitpid(pid, 0)
print(report.decode())
"""


SETUID_WALK = r"""
import json, os, stat
found = []
stack = %s
while stack:
    top = stack.pop()
    try:
        entries = list(os.scandir(top))
    except OSError:
        continue
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if e.path not in ("/proc", "/sys", "/dev"):
                stack.append(e.path)
        elif e.is_file(follow_symlinks=False):
            mode = e.stat(follow_symlinks=False).st_mode
            if mode & (stat.S_ISUID | stat.S_ISGID):
                found.append([e.path, oct(mode)])
print(json.dumps(found))
"""

SU_SUDO = r"""
import json, os, shutil, stat, subprocess
found = {}
for name in ("sudo", "su", "doas", "pkexec", "newgrp", "passwd", "chsh", "chfn", "gpasswd",
             "mount", "umount", "unshare", "nsenter", "setpriv", "capsh"):
    path = shutil.which(name)
    found[name] = {"path": path,
                   "setuid": bool(path and os.stat(path).st_mode & (stat.S_ISUID | stat.S_ISGID))}
def run(argv):
    try:
        p = subprocess.run(argv, input=b"\n\n", capture_output=True, timeout=20)
        return [p.returncode, (p.stdout + p.stderr).decode(errors="replace")[-300:]]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [None, repr(exc)]
found["su root"] = run(["su", "root", "-c", "id -u"])
found["mount"] = run(["mount", "-t", "tmpfs", "none", "/tmp"])
found["uid after"] = os.getuid()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def box(runtime: str) -> Iterator[Session]:
    with open_box(runtime) as session:
        yield session


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_privileged_operation_fails(box: Session, attack: str) -> None:
    found = probe(box, HARNESS % ATTACKS[attack])
    assert found["failed"] is True, (attack, found)
    assert found["errno"] in REFUSED | EXTRA_REFUSALS.get(attack, set()), (attack, found)


def test_the_harness_reports_success_when_there_is_one(box: Session) -> None:
    # Controls: unprivileged operations succeed through the same harness, so the refusals
    # above are the box's doing, not the harness's.
    assert probe(box, HARNESS % "libc.kill(os.getppid(), 0)") == {"failed": False, "ret": "0"}
    assert probe(box, HARNESS % 'os.mkfifo("/tmp/control-fifo")') == {"failed": False,
                                                                         "ret": "None"}


def test_a_user_namespace_gives_no_real_root(box: Session, runtime: str) -> None:
    found = probe(box, USER_NAMESPACE)
    # The seccomp profile (Docker's, sandbox/_runtime/seccomp.py) refuses
    # unshare(CLONE_NEWUSER) without CAP_SYS_ADMIN: runc in the host kernel, gVisor in the
    # Sentry (runsc runs with --oci-seccomp). Without that flag gVisor lets anyone make one,
    # as checked below.
    if found == {"unshare": "EPERM"}:
        return
    assert runtime == "runsc", found
    # gVisor implements user namespaces inside the Sentry and lets anyone create one
    # (unshare succeeds): the "root" there owns nothing. It cannot even map itself (the
    # uid stays the overflow uid 65534), mount, make / writable, read /etc/shadow, write
    # /etc or become root outside; all of it happens in the Sentry, not on the host.
    assert found["unshare"] is True
    assert found["uid"] == 65534
    assert found["mount"] in ("EPERM", "EACCES") and found["remount /"] in ("EPERM", "EACCES")
    assert found["read shadow"] in ("EACCES", "EPERM")
    assert found["write /etc"] in ("EACCES", "EPERM", "EROFS")
    assert found["setuid(0) outside"] in ("EPERM", "EINVAL")


def test_binding_a_port_below_1024_fails(box: Session, runtime: str,
                                         request: pytest.FixtureRequest) -> None:
    if runtime == "runsc":
        request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
            "LIMITATION (gVisor): the Sentry does not enforce privileged ports at all; uid 1000 "
            "binds port 80 even with net.ipv4.ip_unprivileged_port_start=1024 (which we pass); "
            "contained by network=none: only reachable from inside (test_network)")))
    # An expression (the harness runs it in a lambda); the child exits right after.
    code = ("(lambda s: (s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1), "
            "s.bind(('127.0.0.1', 80)), s.close()))(socket.socket())")
    found = probe(box, HARNESS % code)
    assert found["failed"] is True and found["errno"] in REFUSED, found


def test_no_setuid_or_setgid_binaries(box: Session, runtime: str) -> None:
    # The whole tree under runc. Under gVisor every stat is a round trip to the gofer (the
    # full walk takes ~10 s) and the root is the very same image, so there the walk covers
    # where executables live.
    roots = ["/"] if runtime == "runc" else [
        "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec", "/usr/local/bin", "/usr/local/sbin",
        "/opt/venv/bin", "/opt/agentbox", "/etc", "/var", "/root", "/home"]
    found = probe(box, SETUID_WALK % roots, timeout=120)
    assert found == []


def test_su_and_sudo_are_absent_or_useless(box: Session) -> None:
    found = probe(box, SU_SUDO)
    assert found["sudo"]["path"] is None
    assert found["doas"]["path"] is None and found["pkexec"]["path"] is None
    setuid = {k: v for k, v in found.items() if isinstance(v, dict) and v["setuid"]}
    assert setuid == {}, setuid
    # su is there (util-linux ships it) but, without its setuid bit, can never switch user.
    for attempt in ("su root", "mount"):
        code, output = found[attempt]
        assert code not in (0, None), (attempt, code, output)
        assert "\n0\n" not in f"\n{output}", (attempt, output)
    assert found["uid after"] == box.config.uid
