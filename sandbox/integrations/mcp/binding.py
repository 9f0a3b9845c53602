"""What may reach the streamable-HTTP endpoint: the bind, the Host/Origin check, API keys.

Without API keys the endpoint has no authentication, so :func:`bind_http` binds only
real loopback addresses unless told otherwise, and the SDK's DNS-rebinding check is on
for exactly the name and address bound (:func:`transport_security`). With keys
(:func:`api_keys`), :class:`BearerAuth` answers 401 to any request without one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sandbox._exceptions import ConfigError

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.types import ASGIApp, Receive, Scope, Send


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def _host_header(name: str, port: int) -> str:
    name = f"[{name}]" if ":" in name else name  # an IPv6 literal, as a Host header writes it
    return name if port == 80 else f"{name}:{port}"


def bind_http(host: str, port: int, *, allow_remote: bool = False,
              allowed_hosts: Sequence[str] = ()) -> tuple[socket.socket, list[str]]:
    """A listening socket for the MCP endpoint and the Host headers it answers to.

    Without API keys the endpoint has no authentication, so by default it binds only
    what really is a loopback address: every address *host* resolves to must be one
    (``localhost`` that resolves elsewhere is refused), and so must the address actually
    bound (*allow_remote*: with keys, or behind a proxy that authenticates). The Host
    headers allowed are exactly the name given and the address bound, with the port
    bound (a browser on a DNS-rebound name sends that name: refused), ``localhost`` too
    when the address bound is 127.0.0.1 or ::1 (what it resolves to), plus
    *allowed_hosts* (what a proxy in front sends)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not allow_remote and not all(_is_loopback(a) for a in addresses):
        raise ConfigError(f"refusing to bind {host} ({', '.join(sorted(set(addresses)))}): the "
                          "MCP endpoint has no authentication; set AGENTBOX_API_KEYS (or "
                          "AGENTBOX_API_KEYS_FILE), bind a loopback address, or pass "
                          "--allow-remote behind a proxy that authenticates")
    family, kind, proto, _, address = infos[0]
    if _is_wildcard(str(address[0])) and not allowed_hosts:
        raise ConfigError(f"binding {host} would answer to any name: pass --allowed-host with "
                          "the host[:port] clients (or the proxy) send")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound_address, bound_port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
    if not allow_remote and not _is_loopback(bound_address):  # what the kernel really bound
        sock.close()
        raise ConfigError(f"{host} bound {bound_address}, which is not a loopback address")
    names = [] if _is_wildcard(bound_address) else [host, bound_address]
    if bound_address in ("127.0.0.1", "::1"):  # a client may well say "localhost"
        names.append("localhost")
    names = list(dict.fromkeys(names))
    hosts = [_host_header(n, bound_port) for n in names] + list(allowed_hosts)
    return sock, hosts


def transport_security(hosts: Sequence[str]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection, on, for exactly *hosts*: a Host header not in
    the list is answered 421, an Origin that is not one of them 403 (no Origin: allowed,
    as non-browser clients send none)."""
    from mcp.server.transport_security import TransportSecuritySettings

    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=list(hosts), allowed_origins=origins)


def api_keys(environ: Mapping[str, str] | None = None) -> list[str]:
    """The bearer tokens, read as ``agentbox serve`` reads them: ``AGENTBOX_API_KEYS``
    (comma-separated) and ``AGENTBOX_API_KEYS_FILE`` (one a line, ``#`` comments)."""
    env = os.environ if environ is None else environ
    tokens = [t.strip() for t in env.get("AGENTBOX_API_KEYS", "").split(",") if t.strip()]
    path = env.get("AGENTBOX_API_KEYS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as keys_file:
                lines = keys_file.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read AGENTBOX_API_KEYS_FILE {path}: {exc}") from exc
        tokens += [t for t in (line.split("#", 1)[0].strip() for line in lines) if t]
    return tokens


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <one of the
    keys>``, else 401 with ``WWW-Authenticate: Bearer`` (before any session is counted
    or any sandbox started). Each key is compared as a SHA-256 digest with
    ``hmac.compare_digest``, all of them every time: the answer's timing says nothing
    about which key, or how much of one, matched."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("BearerAuth needs at least one key")
        self.app = app
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self.refused = 0

    def allows(self, authorization: bytes) -> bool:
        scheme, _, token = authorization.partition(b" ")
        offered = hashlib.sha256(token.strip()).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, offered)
        return matched and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict((k.lower(), v) for k, v in scope["headers"])
        if self.allows(headers.get(b"authorization", b"")):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        self.refused += 1
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": (
            "missing or wrong API key: send Authorization: Bearer <key> (one of "
            "AGENTBOX_API_KEYS / AGENTBOX_API_KEYS_FILE)")}}
        await JSONResponse(body, status_code=401, headers={
            "WWW-Authenticate": 'Bearer realm="agentbox"'})(scope, receive, send)

