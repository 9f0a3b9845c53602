"""Dependencies shared by the routes: the service and the caller's key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.service import SandboxService

LOCAL_KEY = "local"


def get_service(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.service
    return service


# RFC 9110: a 401 names the scheme the client should use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agentbox"'}


# Declares the scheme in the OpenAPI schema (components.securitySchemes.bearer, and
# security on every route that takes a Key); the checking is get_key's own.
BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="An API key from AGENTBOX_API_KEYS (none needed on loopback "
                                "when no keys are configured).")


def get_key(request: Request, service: Annotated[SandboxService, Depends(get_service)],
            _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
            ) -> str:
    """The caller's key id. Without configured keys (loopback only) everyone is 'local'."""
    keys = service.settings.keys()
    if not keys:
        return LOCAL_KEY
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer KEY)",
                       headers=CHALLENGE)
    for known, key_id in keys.items():
        if secrets.compare_digest(known.encode(), token.strip().encode()):
            return key_id
    raise ApiError(401, "unauthorized", "invalid API key", headers=CHALLENGE)


Service = Annotated[SandboxService, Depends(get_service)]
Key = Annotated[str, Depends(get_key)]
