"""REST authentication: the ``X-OPENTOK-AUTH`` JWT the OpenTok server SDKs send.

HS256, signed with the project's API secret; claims ``iss`` (the API key), ``ist="project"``,
``iat``, ``exp`` and ``jti``, all required (the ``opentok`` SDK sends every one; ``jti`` is a
string and is not checked for replays). Every failure is a 403 (the SDK maps only 403 to
``AuthError``).
"""

from __future__ import annotations

import time

import jwt

from salon.errors import AuthenticationError
from salon.store import Project
from salon.store.registry import Registry

__all__ = ["authenticate"]

#: The REST reference allows an ``exp`` at most 5 minutes after ``iat``; we allow some skew.
MAX_LIFETIME = 300
LEEWAY = 60


async def authenticate(registry: Registry, header: str | None, api_key: str | None) -> Project:
    """Check the ``X-OPENTOK-AUTH`` header and return the project it authenticates.

    :param api_key: the key in the URL path; None where the path has none (``/session/create``),
        in which case the JWT's ``iss`` names the project.
    """
    if not header:
        raise AuthenticationError("missing X-OPENTOK-AUTH header")
    try:
        unverified = jwt.decode(header, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError("X-OPENTOK-AUTH is not a valid JWT") from exc
    issuer = str(unverified.get("iss", ""))
    if api_key is not None and issuer != api_key:
        raise AuthenticationError("the JWT was issued for another project")
    project = await registry.project(issuer) if issuer else None
    if project is None:
        raise AuthenticationError("unknown project")
    secrets = project.valid_secrets()  # the current secret; the old one in a rotation's grace
    for i, secret in enumerate(secrets):
        try:
            claims = jwt.decode(
                header,
                secret,
                algorithms=["HS256"],
                leeway=LEEWAY,
                options={"require": ["iss", "exp", "iat", "jti"]},
            )
            break
        except jwt.InvalidSignatureError as exc:
            if i == len(secrets) - 1:
                raise AuthenticationError("the JWT signature is invalid") from exc
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the JWT has expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the JWT is invalid: {exc}") from exc
    if claims.get("ist") != "project":
        raise AuthenticationError("the JWT must have ist=project")
    try:
        iat, exp = int(claims["iat"]), int(claims["exp"])
    except (TypeError, ValueError) as exc:
        raise AuthenticationError("the JWT has invalid times") from exc
    if exp - iat > MAX_LIFETIME + LEEWAY or iat > time.time() + LEEWAY:
        raise AuthenticationError("the JWT lifetime must be at most 5 minutes")
    return project
