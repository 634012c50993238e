"""Client tokens: minting and verification, byte-compatible with the official ``opentok`` SDK.

Two formats exist, both produced by ``opentok.Client.generate_token``:

* the default JWT (HS256 with the project's API secret; claims ``session_id``, ``role``,
  ``iat``, ``exp``, ``scope="session.connect"``, optional ``initial_layout_class_list`` and
  ``connection_data``, ``iss`` = API key, ``ist="project"``, ``nonce``);
* the legacy ``T1==`` token: ``"T1==" + base64("partner_id={key}&sig={hmac_sha1}:{payload}")``,
  where ``payload`` is the URL-encoded claims and the HMAC-SHA1 is keyed with the API secret.

A third format is verified, never minted: the RS256 JWT of a Vonage application, signed with
its private key (``vonage-video``'s ``generate_client_token``, and the ``opentok`` SDKs in
their Vonage mode). Claims ``application_id``, ``session_id``, ``scope="session.connect"``,
``exp``, ``iat``, ``jti``, ``role``, optional ``connection_data`` and
``initial_layout_class_list`` (a JSON list from ``vonage-video``, a space-joined string from
the Node SDK), ``subject``/``sub`` ``"video"`` and an ``acl``; it is checked with the public
key registered for the application.

Verification checks the signature, the expiry, the role, the size of the connection data, that
the token names the project that signed it, and (when given) the session being joined.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import enum
import hashlib
import hmac
import math
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jwt

from salon.errors import InvalidRequestError, TokenError
from salon.ids import session_id_fields

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "MAX_CONNECTION_DATA_LENGTH",
    "MAX_TOKEN_LIFETIME",
    "Role",
    "TokenClaims",
    "generate_application_token",
    "generate_token",
    "new_rsa_key_pair",
    "token_api_key",
    "verify_token",
]

DEFAULT_TOKEN_LIFETIME = 24 * 3600
MAX_TOKEN_LIFETIME = 30 * 24 * 3600
MAX_CONNECTION_DATA_LENGTH = 1000
MAX_TOKEN_LENGTH = 8192
#: Clock skew tolerated between the application server that minted a token and us.
LEEWAY = 300


class Role(enum.StrEnum):
    """What a connection may do in its session."""

    SUBSCRIBER = "subscriber"
    """Can connect, signal and subscribe; cannot publish."""
    PUBLISHER = "publisher"
    """Can connect, signal, publish and subscribe."""
    PUBLISHER_ONLY = "publisheronly"
    """Can connect, signal and publish; cannot subscribe."""
    MODERATOR = "moderator"
    """Can do everything a publisher can, and force others to disconnect, unpublish or mute."""

    @property
    def can_publish(self) -> bool:
        return self is not Role.SUBSCRIBER

    @property
    def can_subscribe(self) -> bool:
        return self is not Role.PUBLISHER_ONLY

    @property
    def can_moderate(self) -> bool:
        return self is Role.MODERATOR


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token grants."""

    api_key: str
    session_id: str
    role: Role
    expire_time: int
    create_time: int
    connection_data: str = ""
    initial_layout_class_list: tuple[str, ...] = ()


def _expire_time(expire_time: int | float | datetime.datetime | None, now: int) -> int:
    if expire_time is None:
        return now + DEFAULT_TOKEN_LIFETIME
    if isinstance(expire_time, datetime.datetime):
        value = calendar.timegm(expire_time.utctimetuple())
    else:
        value = int(expire_time)
    if value < now:
        raise InvalidRequestError(f"expire_time must be in the future ({value} < {now})")
    if value > now + MAX_TOKEN_LIFETIME:
        raise InvalidRequestError("expire_time must be at most 30 days from now")
    return value


def generate_token(
    api_key: str,
    api_secret: str,
    session_id: str,
    *,
    role: Role | str = Role.PUBLISHER,
    expire_time: int | float | datetime.datetime | None = None,
    data: str | None = None,
    initial_layout_class_list: Sequence[str] = (),
    use_jwt: bool = True,
    now: int | None = None,
    nonce: int | None = None,
) -> str:
    """Mint a client token exactly as ``opentok.Client.generate_token`` does.

    :raises InvalidRequestError: for an unknown role, an expiry in the past or more than
        30 days ahead, connection data over 1000 characters, or a session ID that does not
        belong to ``api_key``.
    """
    try:
        role = Role(role)
    except ValueError as exc:
        raise InvalidRequestError(f"unknown role {role!r}") from exc
    if now is None:
        now = int(time.time())
    expire = _expire_time(expire_time, now)
    if data is not None and len(data) > MAX_CONNECTION_DATA_LENGTH:
        raise InvalidRequestError("connection data must be at most 1000 characters")
    layout = " ".join(initial_layout_class_list)
    if len(layout) > 1000:
        raise InvalidRequestError("initial layout class list must be at most 1000 characters")
    if str(api_key) not in session_id_fields(session_id):
        raise InvalidRequestError("the session ID does not belong to this API key")
    if nonce is None:
        nonce = random.randint(0, 999999)
    if use_jwt:
        claims: dict[str, object] = {
            "session_id": session_id,
            "role": role.value,
            "iat": now,
            "exp": expire,
            "scope": "session.connect",
        }
        if layout:
            claims["initial_layout_class_list"] = layout
        if data:
            claims["connection_data"] = data
        claims.update(iss=str(api_key), ist="project", nonce=nonce)
        return jwt.encode(claims, api_secret, algorithm="HS256")
    params: dict[str, object] = {
        "session_id": session_id,
        "create_time": now,
        "expire_time": expire,
        "role": role.value,
        "nonce": nonce,
        "initial_layout_class_list": layout,
    }
    if data:
        params["connection_data"] = data
    payload = urllib.parse.urlencode(params, True)
    sig = hmac.new(api_secret.encode(), payload.encode(), hashlib.sha1).hexdigest()
    inner = f"partner_id={api_key}&sig={sig}:{payload}"
    return "T1==" + base64.b64encode(inner.encode()).decode()


SecretLookup = Callable[[str], str | Sequence[str] | None]
"""Returns the API secret of the project with this API key, or None if there is none; or the
secrets it may be signed with (the current one and, during a rotation's grace period, the old)."""


def new_rsa_key_pair() -> tuple[str, str]:
    """A new 2048-bit RSA key pair for an application: (private key PEM in PKCS#8, public PEM).

    PKCS#8 (``-----BEGIN PRIVATE KEY-----``) is what the Node ``opentok`` SDK looks for to
    switch to its Vonage mode; the Python SDKs read it too.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def generate_application_token(
    application_id: str,
    private_key: str,
    session_id: str,
    *,
    role: Role | str = Role.PUBLISHER,
    expire_time: int | float | datetime.datetime | None = None,
    data: str | None = None,
    initial_layout_class_list: Sequence[str] = (),
    now: int | None = None,
    public_key: str | None = None,
) -> str:
    """Mint an application's client token as ``vonage-video``'s ``generate_client_token`` does
    (RS256 with the private key; the default lifetime is 24 hours here, 15 minutes there).

    :param public_key: when given, the private key must match it.
    :raises InvalidRequestError: as :func:`generate_token`, or for a key that is not the
        application's RSA private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        role = Role(role)
    except ValueError as exc:
        raise InvalidRequestError(f"unknown role {role!r}") from exc
    if now is None:
        now = int(time.time())
    expire = _expire_time(expire_time, now)
    if data is not None and len(data) > MAX_CONNECTION_DATA_LENGTH:
        raise InvalidRequestError("connection data must be at most 1000 characters")
    if application_id not in session_id_fields(session_id):
        raise InvalidRequestError("the session ID does not belong to this application")
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError("the private key is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidRequestError("the private key must be an RSA key")
    if public_key is not None:
        mine = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if mine.decode().strip() != public_key.strip():
            raise InvalidRequestError("the private key does not match the application's public key")
    claims: dict[str, object] = {"session_id": session_id, "role": role.value}
    if data:
        claims["connection_data"] = data
    if initial_layout_class_list:
        claims["initial_layout_class_list"] = list(initial_layout_class_list)
    claims.update(
        exp=expire,
        jti=str(uuid.uuid4()),
        iat=now,
        subject="video",
        scope="session.connect",
        acl={"paths": {"/session/**": {}}},
        application_id=application_id,
    )
    return jwt.encode(claims, key, algorithm="RS256", headers={"typ": "JWT"})


def verify_token(
    token: str,
    secret_for: SecretLookup,
    *,
    session_id: str | None = None,
    now: int | None = None,
    public_key_for: SecretLookup = lambda key: None,
) -> TokenClaims:
    """Check a client token and return what it grants.

    :param secret_for: looks up a project's API secret by API key (None: no such project, or
        one that has no usable secret, such as an application).
    :param public_key_for: looks up an application's PEM public key by application id, for
        RS256 tokens (None: no such application).
    :param session_id: when given, the token must be for this session.
    :raises TokenError: with a specific ``code`` (``invalid_token``, ``token_expired``,
        ``unknown_project``, ``wrong_session``) when the token cannot be used.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("the token is malformed")
    if now is None:
        now = int(time.time())
    if token.startswith("T1=="):
        claims = _verify_t1(token, secret_for, now)
    elif token.count(".") == 2:
        claims = _verify_jwt(token, secret_for, public_key_for, now)
    else:
        raise TokenError("the token is malformed")
    if claims.expire_time < now:
        raise TokenError("the token has expired", code="token_expired")
    if claims.expire_time > now + MAX_TOKEN_LIFETIME + LEEWAY:
        raise TokenError("the token expires more than 30 days from now")
    if len(claims.connection_data) > MAX_CONNECTION_DATA_LENGTH:
        raise TokenError("the token's connection data is over 1000 characters")
    try:
        fields = session_id_fields(claims.session_id)
    except InvalidRequestError as exc:
        raise TokenError("the token names an invalid session ID") from exc
    if claims.api_key not in fields:
        raise TokenError("the token's session does not belong to its project", code="wrong_session")
    if session_id is not None and claims.session_id != session_id:
        raise TokenError("the token is for another session", code="wrong_session")
    return claims


def _role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError as exc:
        raise TokenError(f"the token has an unknown role {value!r}") from exc


def _lookup(secret_for: SecretLookup, api_key: str, what: str = "project") -> tuple[str, ...]:
    found = secret_for(api_key)
    secrets = (found,) if isinstance(found, str) else tuple(found or ())
    if not secrets:
        raise TokenError(f"the token's {what} does not exist", code="unknown_project")
    return secrets


#: Times beyond this (either way) are refused: no real token has them, and an unbounded
#: integer would only cost time (or overflow) further on.
_MAX_TIME = 2**53


def _claim_time(value: object) -> int:
    """A token's ``exp``/``iat`` (``expire_time``/``create_time``): an integer number of
    seconds, or a finite float (JSON number) or a decimal string (``T1==``) of one.

    :raises TokenError: for anything else: ``1e400`` (infinity once decoded), NaN, a boolean,
        a string that is not an integer, a value beyond +/- 2**53.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    elif isinstance(value, str) and 0 < len(value) <= 20:
        try:
            number = int(value)
        except ValueError:
            number = None
    if number is None or not -_MAX_TIME <= number <= _MAX_TIME:
        raise TokenError("the token has invalid times")
    return number


def _verify_t1(token: str, secret_for: SecretLookup, now: int) -> TokenClaims:
    try:
        decoded = base64.b64decode(token[4:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise TokenError("the token is malformed") from exc
    meta, sep, payload = decoded.partition(":")
    if not sep:
        raise TokenError("the token is malformed")
    meta_fields = dict(urllib.parse.parse_qsl(meta))
    api_key = meta_fields.get("partner_id", "")
    sig = meta_fields.get("sig", "")
    if not any(
        hmac.compare_digest(hmac.new(secret.encode(), payload.encode(), hashlib.sha1).hexdigest(), sig)
        for secret in _lookup(secret_for, api_key, "project (with an API secret)")
    ):
        raise TokenError("the token's signature is invalid", code="invalid_signature")
    fields = dict(urllib.parse.parse_qsl(payload, keep_blank_values=True))
    try:
        session_id = fields["session_id"]
        expire_text = fields["expire_time"]
    except KeyError as exc:
        raise TokenError("the token is missing required fields") from exc
    expire = _claim_time(expire_text)
    create = _claim_time(fields.get("create_time", now))
    return TokenClaims(
        api_key=api_key,
        session_id=session_id,
        role=_role(fields.get("role", Role.PUBLISHER.value)),
        expire_time=expire,
        create_time=create,
        connection_data=fields.get("connection_data", ""),
        initial_layout_class_list=tuple(fields.get("initial_layout_class_list", "").split()),
    )


def _verify_jwt(token: str, secret_for: SecretLookup, public_key_for: SecretLookup, now: int) -> TokenClaims:
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError("the token is malformed") from exc
    alg = header.get("alg")
    if alg == "HS256":
        api_key = str(unverified.get("iss", ""))
        keys = _lookup(secret_for, api_key, "project (with an API secret)")
    elif alg == "RS256":
        api_key = str(unverified.get("application_id", ""))
        keys = _lookup(public_key_for, api_key, "application (with a public key)")
    else:
        raise TokenError("the token must be signed with HS256 (API secret) or RS256 (application key)")
    for i, key in enumerate(keys):
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "require": ["exp", "session_id"],
                },
            )
            break
        except jwt.InvalidSignatureError as exc:
            if i == len(keys) - 1:
                raise TokenError("the token's signature is invalid", code="invalid_signature") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is invalid: {exc}") from exc
    if claims.get("scope") != "session.connect":
        raise TokenError("the token is not a session.connect token of a project or application")
    if alg == "HS256" and claims.get("ist") != "project":
        raise TokenError("the token is not a session.connect token of a project")
    if alg == "RS256":
        if "ist" in claims and claims["ist"] != "project":
            raise TokenError("the token is not a session.connect token of a project")
        if "iss" in claims and str(claims["iss"]) != api_key:
            raise TokenError("the token's iss and application_id disagree")
        subject = claims.get("subject", claims.get("sub", "video"))
        if subject != "video":
            raise TokenError("the token is not a video token")
    layout = claims.get("initial_layout_class_list", "")
    if isinstance(layout, list):
        layout = " ".join(str(item) for item in layout)
    expire = _claim_time(claims["exp"])
    create = _claim_time(claims.get("iat", now))
    data = claims.get("connection_data", "")
    return TokenClaims(
        api_key=api_key,
        session_id=str(claims["session_id"]),
        role=_role(claims.get("role", Role.PUBLISHER.value)),
        expire_time=expire,
        create_time=create,
        connection_data=data if isinstance(data, str) else str(data),
        initial_layout_class_list=tuple(str(layout).split()),
    )


def token_api_key(token: str) -> str | None:
    """The API key a token claims to be from, read without verifying anything.

    Used to find the project whose secret verifies the token; None if it cannot be read.
    """
    try:
        if token.startswith("T1=="):
            meta = base64.b64decode(token[4:], validate=True).decode().partition(":")[0]
            return dict(urllib.parse.parse_qsl(meta)).get("partner_id")
        if token.count(".") == 2:
            claims = jwt.decode(token, options={"verify_signature": False})
            if jwt.get_unverified_header(token).get("alg") == "RS256":
                return str(claims.get("application_id", "")) or None
            return str(claims.get("iss", "")) or None
    except (binascii.Error, UnicodeDecodeError, ValueError, jwt.PyJWTError):
        return None
    return None
