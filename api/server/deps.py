"""Dependencies shared by the routes: the service and the caller's key."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.server.errors import ApiError
from api.server.service import SandboxService

LOCAL_KEY = "local"


async def get_service(request: Request) -> SandboxService:
    # async, as every dependency here: FastAPI runs a sync one in a worker thread, two
    # thread hops per request on the hot path.
    service: SandboxService = request.app.state.service
    return service


# RFC 9110: a 401 names the scheme the client should use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agentbox"'}


# Declares the scheme in the OpenAPI schema (components.securitySchemes.bearer, and
# security on every route that takes a Key); the checking is get_key's own.
BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="An API key from AGENTBOX_API_KEYS (none needed on loopback "
                                "when no keys are configured).")


def match_key(authorization: bytes, keys: dict[str, str]) -> str:
    """The key id an ``Authorization: Bearer TOKEN`` header names, or ApiError(401).
    Every known key is compared, each as a SHA-256 digest with ``hmac.compare_digest``,
    so the time taken says neither which key matched nor how much of one did."""
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer KEY)",
                       headers=CHALLENGE)
    offered = hashlib.sha256(token).digest()
    found = None
    for known, key_id in keys.items():
        if hmac.compare_digest(hashlib.sha256(known.encode()).digest(), offered):
            found = key_id
    if found is None:
        raise ApiError(401, "unauthorized", "invalid API key", headers=CHALLENGE)
    return found


# api/server/middleware.py's AuthGate checks the key before any body is read and leaves the key id in
# the ASGI scope under this name; get_key reuses it instead of checking twice.
SCOPE_KEY = "agentbox.key_id"


async def get_key(request: Request, service: Annotated[SandboxService, Depends(get_service)],
            _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
            ) -> str:
    """The caller's key id. Without configured keys (loopback only) everyone is 'local'."""
    checked = request.scope.get(SCOPE_KEY)
    if isinstance(checked, str):
        return checked
    keys = service.settings.keys()
    if not keys:
        return LOCAL_KEY
    return match_key(request.headers.get("authorization", "").encode("latin-1"), keys)


Service = Annotated[SandboxService, Depends(get_service)]
Key = Annotated[str, Depends(get_key)]
