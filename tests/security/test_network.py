"""The network: only a private loopback. Nothing outside answers (each destination below is
tried exactly once, and fails before a packet could leave), no name resolves, and the
host's own loopback services are out of reach: the sandbox's 127.0.0.1 is its own.

runc answers "Network is unreachable" (IPv6: "Cannot assign requested address": not even
a link-local address exists); gVisor's netstack answers "No route to host".
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import Session
from tests.security.conftest import container_attrs, open_box, probe, run_ok

NO_ROUTE = {"ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL"}

CONNECT = r"""
import errno, json, socket, time
def tcp(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    t0 = time.monotonic()
    try:
        s.connect((host, port))
        return ["connected", time.monotonic() - t0]
    except OSError as exc:
        return [errno.errorcode.get(exc.errno, str(exc)), time.monotonic() - t0]
    finally:
        s.close()
def udp(host, port, connect):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.monotonic()
    try:
        query = bytes.fromhex("abcd01000001000000000000") + b"\x04pypi\x03org\x00\x00\x01\x00\x01"
        if connect:
            s.connect((host, port))
            s.send(query)
        else:
            s.sendto(query, (host, port))
        return ["sent", time.monotonic() - t0]
    except OSError as exc:
        return [errno.errorcode.get(exc.errno, str(exc)), time.monotonic() - t0]
    finally:
        s.close()
print(json.dumps(%s))
"""

# The host's (and Docker's) side of things, from inside: the default bridge's gateway,
# the address of the host's first non-loopback interface, link-local metadata services.
TARGETS = [("1.1.1.1", 53), ("8.8.8.8", 443), ("172.17.0.1", 2375), ("169.254.169.254", 80),
           ("2606:4700:4700::1111", 443)]


def host_address() -> str | None:
    """An address of this host on a real interface (a UDP connect sends nothing)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing decision only, no packet
        addr: str = s.getsockname()[0]
        return addr
    return None


@pytest.fixture(scope="module")
def box(runtime: str) -> Iterator[Session]:
    with open_box(runtime) as session:
        yield session


def test_only_loopback_exists(box: Session, engine: Any, runtime: str) -> None:
    found = probe(box, r"""
import json, os
dev = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
routes = open("/proc/net/route").read().splitlines()[1:]
print(json.dumps({"sys": sorted(os.listdir("/sys/class/net")), "dev": dev, "routes": routes}))
""")
    assert found == {"sys": ["lo"], "dev": ["lo"], "routes": []}
    attrs = container_attrs(engine, box)
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    networks = attrs["NetworkSettings"]["Networks"]
    assert set(networks) == {"none"}
    assert all(not n.get("IPAddress") and not n.get("Gateway") for n in networks.values())
    if runtime == "runc":
        # From the host: the container's network namespace (seen through its init) has
        # nothing but lo either.
        with open(f"/proc/{attrs['State']['Pid']}/net/dev") as fh:
            host_view = [line.split(":")[0].strip() for line in fh.read().splitlines()[2:]]
        assert host_view == ["lo"]


@pytest.mark.parametrize(("host", "port"), TARGETS)
def test_tcp_out_fails_at_once(box: Session, host: str, port: int) -> None:
    outcome, seconds = probe(box, CONNECT % f"tcp({host!r}, {port})")
    assert outcome in NO_ROUTE, outcome
    assert seconds < 0.5  # refused locally, not timed out on the wire


def test_tcp_to_the_hosts_own_address_fails(box: Session) -> None:
    address = host_address()
    assert address is not None and not address.startswith("127.")
    outcome, seconds = probe(box, CONNECT % f"tcp({address!r}, 22)")
    assert outcome in NO_ROUTE and seconds < 0.5


@pytest.mark.parametrize("connect", [False, True], ids=["sendto", "connect+send"])
@pytest.mark.parametrize(("host", "port"), [("1.1.1.1", 53), ("8.8.8.8", 53),
                                            ("2606:4700:4700::1111", 53)])
def test_udp_out_fails_at_once(box: Session, host: str, port: int, connect: bool) -> None:
    outcome, seconds = probe(box, CONNECT % f"udp({host!r}, {port}, {connect})")
    assert outcome in NO_ROUTE, outcome
    assert seconds < 0.5


def test_dns_resolution_fails(box: Session) -> None:
    found = probe(box, r"""
import json, socket, time
def resolve(name):
    t0 = time.monotonic()
    try:
        return [sorted({a[4][0] for a in socket.getaddrinfo(name, 443)}), time.monotonic() - t0]
    except socket.gaierror as exc:
        return ["gaierror", exc.errno, time.monotonic() - t0]
print(json.dumps({n: resolve(n) for n in ("pypi.org", "example.com", "host.docker.internal",
                                          "localhost")}))
""")
    for name in ("pypi.org", "example.com", "host.docker.internal"):
        assert found[name][0] == "gaierror", (name, found[name])
        assert found[name][-1] < 5  # fails at once: no resolver is reachable
    assert "127.0.0.1" in found["localhost"][0]  # control: /etc/hosts still works


def test_the_hosts_loopback_services_are_unreachable(box: Session) -> None:
    # A real service on the HOST's 127.0.0.1 (and one on an abstract unix socket, which
    # lives in the network namespace too): the sandbox reaches neither; its loopback
    # and abstract namespace are its own.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    abstract = f"\0agentbox-test-{secrets.token_hex(6)}"
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind(abstract)
    unix_listener.listen(8)
    unix_listener.settimeout(0.5)
    try:
        found = probe(box, CONNECT.replace("print(json.dumps(%s))", "") + f"""
u = socket.socket(socket.AF_UNIX)
try:
    u.connect({abstract!r})
    unix = "connected"
except OSError as exc:
    unix = errno.errorcode.get(exc.errno, str(exc))
print(json.dumps({{"tcp": tcp("127.0.0.1", {port}), "unix": unix}}))
""")
        assert found["tcp"][0] == "ECONNREFUSED"  # nothing listens on *its* loopback
        assert found["unix"] == "ECONNREFUSED"
        for sock in (listener, unix_listener):  # and the host's listeners saw no one
            with pytest.raises(TimeoutError):
                sock.accept()
    finally:
        listener.close()
        unix_listener.close()


def host_listeners() -> set[int]:
    """Ports listening on 127.0.0.1 in the HOST's network namespace (this process's)."""
    ports = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.split(":")
            if state == "0A" and addr in ("0100007F", "00000000"):
                ports.add(int(port, 16))
    return ports


def test_the_sandboxs_listeners_are_unreachable_from_the_host(box: Session,
                                                              runtime: str) -> None:
    # The sandbox listens on its 127.0.0.1 (and on port 80 under gVisor, which does not
    # enforce privileged ports: see test_privileged); the host's namespace shows no such
    # listener, cannot connect, and can bind the very same port itself at the same
    # moment: two different loopbacks.
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    before = host_listeners()
    found = probe(box, f"""
import json, socket
listeners = []
for p in ({port}, 80):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
    except PermissionError:  # port 80 under runc: ip_unprivileged_port_start=1024
        s.close()
        continue
    s.listen(8)
    listeners.append(s)
print(json.dumps([s.getsockname()[1] for s in listeners]))
""")
    assert found == ([port, 80] if runtime == "runsc" else [port])
    try:
        now = host_listeners()  # (other programs on this machine may come and go meanwhile)
        assert port not in now
        assert 80 not in now or 80 in before
        with socket.socket() as c:
            c.settimeout(2)
            assert c.connect_ex(("127.0.0.1", port)) != 0
        with socket.socket() as same:
            same.bind(("127.0.0.1", port))  # free on the host while the sandbox holds it
    finally:
        run_ok(box, "for s in listeners: s.close()")
