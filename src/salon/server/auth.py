"""REST authentication: the JWT the OpenTok and Vonage server SDKs send with every call.

Two kinds are accepted, in either header (``X-OPENTOK-AUTH: <jwt>`` or ``Authorization:
Bearer <jwt>``), told apart by the JWT's ``alg``:

* **HS256**, signed with a project's API secret (``opentok`` for Python and Node with an API
  key and secret). Claims ``iss`` (the API key), ``ist="project"``, ``iat`` and ``exp`` are
  required; ``jti`` is optional (the Python SDK sends one, the Node SDK does not) and is never
  checked for replays. ``exp - iat`` is at most 5 minutes (Python sends 3, Node 5).
* **RS256**, signed with an application's private key and verified with the public key
  registered for it (``vonage`` 4.x with ``vonage-video``, and the ``opentok`` SDKs in their
  Vonage mode). Claims ``application_id``, ``iat`` and ``exp`` are required; ``exp - iat`` is
  at most 15 minutes (``vonage-video`` sends exactly 15). An ``iss`` or ``ist``, where sent,
  must agree (the Node SDK sends both). A repeated ``jti`` is accepted: the Vonage SDK's HTTP
  client retries a request with the same token.

Times are checked with a 60 s clock-skew allowance. Every failure is a 403 (the SDKs map only
403 to their authentication error).
"""

from __future__ import annotations

import time

import jwt

from salon.errors import AuthenticationError
from salon.store import Project
from salon.store.registry import Registry

__all__ = ["authenticate", "rest_jwt"]

#: ``exp - iat`` at most: 5 minutes for HS256 (the REST reference's limit; opentok for Python
#: sends 3, for Node 5), 15 minutes for RS256 (vonage-video sends exactly 15).
MAX_LIFETIME = {"HS256": 300, "RS256": 900}
#: Clock skew allowed between the SDK's host and the server, seconds.
LEEWAY = 60


def rest_jwt(x_opentok_auth: str | None, authorization: str | None) -> str | None:
    """The JWT of a request: ``X-OPENTOK-AUTH``, else an ``Authorization: Bearer`` token."""
    if x_opentok_auth:
        return x_opentok_auth
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


async def authenticate(registry: Registry, token: str | None, api_key: str | None) -> Project:
    """Check a REST JWT (see :func:`rest_jwt`) and return the project it authenticates.

    :param api_key: the project (API key or application id) in the URL path; None where the
        path has none (``/session/create``), in which case the JWT names the project.
    """
    if not token:
        raise AuthenticationError("missing X-OPENTOK-AUTH or Authorization: Bearer header")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError("the auth header is not a valid JWT") from exc
    alg = header.get("alg")
    if alg == "HS256":
        issuer = str(unverified.get("iss", ""))
    elif alg == "RS256":
        issuer = str(unverified.get("application_id", ""))
        if not issuer:
            raise AuthenticationError("an RS256 JWT must have an application_id claim")
    else:
        raise AuthenticationError("the JWT must be signed with HS256 (API secret) or RS256 (application key)")
    if api_key is not None and issuer != api_key:
        raise AuthenticationError("the JWT was issued for another project")
    project = await registry.project(issuer) if issuer else None
    if project is None:
        raise AuthenticationError("unknown project")
    keys: tuple[str, ...]
    if alg == "HS256":
        if project.public_key is not None:
            raise AuthenticationError("an application authenticates with RS256 JWTs of its private key")
        # The current secret; the old one too during a rotation's grace period.
        keys, required = project.valid_secrets(), ["iss", "ist", "iat", "exp"]
    else:
        if project.public_key is None:
            raise AuthenticationError("this project has no public key: sign with HS256 and its API secret")
        keys, required = (project.public_key,), ["application_id", "iat", "exp"]
    for i, key in enumerate(keys):
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                leeway=LEEWAY,
                options={"require": required, "verify_aud": False},
            )
            break
        except jwt.InvalidSignatureError as exc:
            if i == len(keys) - 1:
                raise AuthenticationError("the JWT signature is invalid") from exc
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the JWT has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthenticationError("the JWT was issued in the future") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the JWT is invalid: {exc}") from exc
        except (OverflowError, TypeError, ValueError) as exc:  # exp or iat of 1e400 (infinity)
            raise AuthenticationError("the JWT has invalid times") from exc
    if alg == "HS256" or "ist" in claims:
        if claims.get("ist") != "project":
            raise AuthenticationError("the JWT must have ist=project")
    if alg == "RS256" and "iss" in claims and str(claims["iss"]) != issuer:
        raise AuthenticationError("the JWT's iss and application_id disagree")
    try:
        iat, exp = int(claims["iat"]), int(claims["exp"])
    except (OverflowError, TypeError, ValueError) as exc:
        raise AuthenticationError("the JWT has invalid times") from exc
    limit = MAX_LIFETIME[alg]
    if exp - iat > limit:
        raise AuthenticationError(f"the JWT lifetime (exp - iat) must be at most {limit // 60} minutes")
    if iat > time.time() + LEEWAY:
        raise AuthenticationError("the JWT was issued in the future")
    return project
