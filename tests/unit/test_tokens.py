"""Tokens and session IDs, checked against what the official ``opentok`` SDK produces."""

from __future__ import annotations

import base64
import time
import warnings
from unittest import mock

import opentok
import pytest

from salon.errors import InvalidRequestError, TokenError
from salon.ids import decode_session_id, encode_session_id
from salon.tokens import Role, generate_token, verify_token

KEY = "12345678"
SECRET = "0123456789abcdef0123456789abcdef01234567"
SID = "1_MX4xMjM0NTY3OH5-MTcwMDAwMDAwMDAwMH5UMnRaYjNWU1lXNWtiMjFDYVhSen5-"
NOW = 1700000000

# Worked examples from the REST reference, produced by opentok 3.15.0.
REFERENCE_T1 = (
    "T1==cGFydG5lcl9pZD0xMjM0NTY3OCZzaWc9OGE1NjRhNTMzY2Q1NTE4MDY0YmRhOTQ2YWVhNDQ3NGEzNDE2MTVmZDpzZXNzaW9uX2lkPT"
    "FfTVg0eE1qTTBOVFkzT0g1LU1UY3dNREF3TURBd01EQXdNSDVVTW5SYVlqTldVMWxYTld0aU1qRkRZVmhTZW41LSZjcmVhdGVfdGltZT0x"
    "NzAwMDAwMDAwJmV4cGlyZV90aW1lPTE3MDAwMDM2MDAmcm9sZT1tb2RlcmF0b3Imbm9uY2U9NDI0MjQyJmluaXRpYWxfbGF5b3V0X2NsYX"
    "NzX2xpc3Q9Zm9jdXMrZnVsbCZjb25uZWN0aW9uX2RhdGE9bmFtZSUzREFsaWNl"
)
REFERENCE_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzZXNzaW9uX2lkIjoiMV9NWDR4TWpNME5UWTNPSDUtTVRjd01EQXdNREF3TURBd01INVVN"
    "blJhWWpOV1UxbFhOV3RpTWpGRFlWaFNlbjUtIiwicm9sZSI6Im1vZGVyYXRvciIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAw"
    "LCJzY29wZSI6InNlc3Npb24uY29ubmVjdCIsImluaXRpYWxfbGF5b3V0X2NsYXNzX2xpc3QiOiJmb2N1cyBmdWxsIiwiY29ubmVjdGlvbl9k"
    "YXRhIjoibmFtZT1BbGljZSIsImlzcyI6IjEyMzQ1Njc4IiwiaXN0IjoicHJvamVjdCIsIm5vbmNlIjo0MjQyNDJ9.X1ap9jA8haL7-bqaBUU_"
    "0Vb5r-FayUIimTI0H_Uqm-k"
)


def secrets(key: str) -> str | None:
    return SECRET if key == KEY else None


def sdk_token(**kwargs: object) -> str:
    client = opentok.Client(KEY, SECRET)
    with (
        mock.patch("opentok.opentok.time.time", return_value=NOW),
        mock.patch("opentok.opentok.random.randint", return_value=424242),
    ):
        return str(client.generate_token(SID, **kwargs))


@pytest.mark.parametrize("use_jwt", [True, False])
@pytest.mark.parametrize("role", ["subscriber", "publisher", "publisheronly", "moderator"])
def test_generated_tokens_equal_the_sdk_byte_for_byte(use_jwt: bool, role: str) -> None:
    ours = generate_token(
        KEY,
        SECRET,
        SID,
        role=role,
        expire_time=NOW + 3600,
        data="name=Alice",
        initial_layout_class_list=["focus", "full"],
        use_jwt=use_jwt,
        now=NOW,
        nonce=424242,
    )
    theirs = sdk_token(
        role=opentok.Roles(role),
        expire_time=NOW + 3600,
        data="name=Alice",
        initial_layout_class_list=["focus", "full"],
        use_jwt=use_jwt,
    )
    assert ours == theirs


def test_reference_worked_examples_are_reproduced() -> None:
    kwargs = dict(
        role="moderator",
        expire_time=NOW + 3600,
        data="name=Alice",
        initial_layout_class_list=["focus", "full"],
        now=NOW,
        nonce=424242,
    )
    assert generate_token(KEY, SECRET, SID, use_jwt=False, **kwargs) == REFERENCE_T1  # type: ignore[arg-type]
    assert generate_token(KEY, SECRET, SID, use_jwt=True, **kwargs) == REFERENCE_JWT  # type: ignore[arg-type]


@pytest.mark.parametrize("token", [REFERENCE_T1, REFERENCE_JWT])
def test_sdk_tokens_verify_with_their_claims(token: str) -> None:
    claims = verify_token(token, secrets, session_id=SID, now=NOW + 1)
    assert claims.api_key == KEY
    assert claims.session_id == SID
    assert claims.role is Role.MODERATOR
    assert claims.expire_time == NOW + 3600
    assert claims.connection_data == "name=Alice"
    assert claims.initial_layout_class_list == ("focus", "full")


@pytest.mark.parametrize("use_jwt", [True, False])
def test_default_sdk_token_is_a_publisher_for_24_hours(use_jwt: bool) -> None:
    claims = verify_token(sdk_token(use_jwt=use_jwt), secrets, now=NOW)
    assert claims.role is Role.PUBLISHER
    assert claims.expire_time == NOW + 86400
    assert claims.connection_data == ""


@pytest.mark.parametrize("token", [REFERENCE_T1, REFERENCE_JWT])
def test_expired_token_is_refused(token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, secrets, now=NOW + 3601)
    assert info.value.code == "token_expired"


@pytest.mark.parametrize("token", [REFERENCE_T1, REFERENCE_JWT])
def test_token_signed_with_another_secret_is_refused(token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, lambda key: "another-secret-that-is-long-enough-for-hs256", now=NOW)
    assert info.value.code == "invalid_signature"


@pytest.mark.parametrize("token", [REFERENCE_T1, REFERENCE_JWT])
def test_token_of_unknown_project_is_refused(token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, lambda key: None, now=NOW)
    assert info.value.code == "unknown_project"


@pytest.mark.parametrize("token", [REFERENCE_T1, REFERENCE_JWT])
def test_token_for_another_session_is_refused(token: str) -> None:
    other = encode_session_id(KEY)
    with pytest.raises(TokenError) as info:
        verify_token(token, secrets, session_id=other, now=NOW)
    assert info.value.code == "wrong_session"


def test_tampered_t1_token_is_refused() -> None:
    inner = base64.b64decode(REFERENCE_T1[4:]).decode().replace("role=moderator", "role=publisher")
    tampered = "T1==" + base64.b64encode(inner.encode()).decode()
    with pytest.raises(TokenError) as info:
        verify_token(tampered, secrets, now=NOW)
    assert info.value.code == "invalid_signature"


def test_tampered_jwt_payload_is_refused() -> None:
    header, _payload, sig = REFERENCE_JWT.split(".")
    other = generate_token(KEY, SECRET, SID, role="subscriber", now=NOW, expire_time=NOW + 3600).split(".")[1]
    with pytest.raises(TokenError) as info:
        verify_token(f"{header}.{other}.{sig}", secrets, now=NOW)
    assert info.value.code == "invalid_signature"


@pytest.mark.parametrize(
    "token", ["", "garbage", "T1==%%%", "a.b.c", "T1==" + base64.b64encode(b"x").decode()]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, secrets, now=NOW)
    assert (info.value.code, info.value.message) == ("invalid_token", "the token is malformed")


def test_token_whose_session_belongs_to_another_project_is_refused() -> None:
    foreign_sid = encode_session_id("99999999")
    token = generate_token(KEY, SECRET, SID, now=NOW)
    # Forge a JWT for a foreign session, correctly signed by KEY's secret.
    import jwt

    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    claims["session_id"] = foreign_sid
    forged = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(TokenError) as info:
        verify_token(forged, secrets, now=NOW)
    assert info.value.code == "wrong_session"


def test_generate_token_validates_like_the_sdk() -> None:
    with pytest.raises(InvalidRequestError):
        generate_token(KEY, SECRET, SID, role="admin", now=NOW)
    with pytest.raises(InvalidRequestError):
        generate_token(KEY, SECRET, SID, expire_time=NOW - 1, now=NOW)
    with pytest.raises(InvalidRequestError):
        generate_token(KEY, SECRET, SID, expire_time=NOW + 31 * 86400, now=NOW)
    with pytest.raises(InvalidRequestError):
        generate_token(KEY, SECRET, SID, data="x" * 1001, now=NOW)
    with pytest.raises(InvalidRequestError):
        generate_token("87654321", SECRET, SID, now=NOW)


def test_session_id_round_trips_and_the_sdk_accepts_it() -> None:
    sid = encode_session_id(KEY, "12.34.56.78", created_ms=1700000000000, nonce="abc")
    decoded = decode_session_id(sid)
    assert (decoded.api_key, decoded.location, decoded.created_ms, decoded.nonce) == (
        KEY,
        "12.34.56.78",
        1700000000000,
        "abc",
    )
    assert "=" not in sid and sid.startswith("1_")
    # The SDK decodes the ID to check it belongs to the key; this raises if it does not.
    opentok.Client(KEY, SECRET).generate_token(sid)


def test_reference_session_id_decodes() -> None:
    decoded = decode_session_id(SID)
    assert decoded.api_key == KEY
    assert decoded.created_ms == 1700000000000


@pytest.mark.parametrize(
    "bad", ["", "1_", "1_!!!!", "1_" + base64.urlsafe_b64encode(b"no tildes").decode(), "x" * 300]
)
def test_invalid_session_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        decode_session_id(bad)


# -- refusals on the verify side, for tokens the SDK would never mint ---------------------


def _jwt(secret: str = SECRET, algorithm: str = "HS256", **overrides: object) -> str:
    import jwt

    claims: dict[str, object] = {
        "session_id": SID,
        "role": "publisher",
        "iat": NOW,
        "exp": NOW + 3600,
        "scope": "session.connect",
        "iss": KEY,
        "ist": "project",
        "nonce": 1,
    }
    claims.update(overrides)
    with warnings.catch_warnings():  # a 40-byte secret is "short" for HS384/HS512
        warnings.simplefilter("ignore")
        return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm=algorithm)


def _t1(**overrides: object) -> str:
    import hashlib
    import hmac
    import urllib.parse

    params: dict[str, object] = {
        "session_id": SID,
        "create_time": NOW,
        "expire_time": NOW + 3600,
        "role": "publisher",
        "nonce": 1,
        "initial_layout_class_list": "",
    }
    params.update(overrides)
    payload = urllib.parse.urlencode(params)
    sig = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha1).hexdigest()
    return "T1==" + base64.b64encode(f"partner_id={KEY}&sig={sig}:{payload}".encode()).decode()


@pytest.mark.parametrize("make", [_jwt, _t1], ids=["jwt", "t1"])
def test_a_well_formed_token_of_each_kind_verifies(make: object) -> None:
    assert callable(make)
    assert verify_token(make(), secrets, session_id=SID, now=NOW).role is Role.PUBLISHER


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (_jwt(exp=NOW + 30 * 86400 + 301), "more than 30 days"),
        (_t1(expire_time=NOW + 30 * 86400 + 301), "more than 30 days"),
        (_jwt(connection_data="x" * 1001), "over 1000 characters"),
        (_t1(connection_data="x" * 1001), "over 1000 characters"),
        (_jwt(role="admin"), "unknown role"),
        (_t1(role="admin"), "unknown role"),
        (_jwt(algorithm="HS512"), "HS256"),
        (_jwt(algorithm="HS384"), "HS256"),
        (_jwt(ist="account"), "session.connect token of a project"),
        (_jwt(ist=None), "session.connect token of a project"),
        (_jwt(scope="session.moderate"), "session.connect token of a project"),
        (_jwt(scope=None), "session.connect token of a project"),
    ],
    ids=[
        "jwt-expiry-over-30-days",
        "t1-expiry-over-30-days",
        "jwt-data-over-1000",
        "t1-data-over-1000",
        "jwt-unknown-role",
        "t1-unknown-role",
        "jwt-hs512",
        "jwt-hs384",
        "jwt-wrong-ist",
        "jwt-no-ist",
        "jwt-wrong-scope",
        "jwt-no-scope",
    ],
)
def test_tokens_the_sdk_would_not_mint_are_refused(token: str, message: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, secrets, session_id=SID, now=NOW)
    assert info.value.code == "invalid_token"
    assert message in info.value.message


def test_the_limits_themselves_are_accepted() -> None:
    claims = verify_token(
        _jwt(exp=NOW + 30 * 86400 + 300, connection_data="x" * 1000), secrets, session_id=SID, now=NOW
    )
    assert len(claims.connection_data) == 1000


def test_an_unsigned_jwt_is_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = _jwt().split(".")[1]
    with pytest.raises(TokenError) as info:
        verify_token(f"{header}.{payload}.", secrets, session_id=SID, now=NOW)
    assert info.value.code == "invalid_token"
    assert "HS256" in info.value.message


def _jwt_with_raw_claims(**raw: str) -> str:
    """A well-signed JWT whose payload has some claims spelled as raw JSON text (``1e400``,
    which ``json.dumps`` cannot produce and which decodes to infinity)."""
    import hashlib
    import hmac
    import json

    claims: dict[str, object] = {
        "session_id": SID,
        "role": "publisher",
        "iat": NOW,
        "exp": NOW + 3600,
        "scope": "session.connect",
        "iss": KEY,
        "ist": "project",
    }
    for name in raw:
        claims[name] = f"@{name}@"
    text = json.dumps(claims)
    for name, value in raw.items():
        text = text.replace(f'"@{name}@"', value)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(text.encode())
    signature = b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


@pytest.mark.parametrize(
    "token",
    [
        _jwt_with_raw_claims(exp="1e400"),
        _jwt_with_raw_claims(exp="-1e400"),
        _jwt_with_raw_claims(iat="1e400"),
        _jwt_with_raw_claims(exp="NaN"),
        _jwt_with_raw_claims(exp="Infinity"),
        _jwt_with_raw_claims(exp="1" + "0" * 400),
        _jwt_with_raw_claims(iat="-" + "9" * 30),
        _jwt_with_raw_claims(exp="true"),
        _jwt_with_raw_claims(exp='"soon"'),
        _jwt_with_raw_claims(exp="null"),
        _jwt_with_raw_claims(exp="[1]"),
        _t1(expire_time="1e400"),
        _t1(expire_time="inf"),
        _t1(expire_time="1" + "0" * 400),
        _t1(expire_time=""),
        _t1(create_time="1e400"),
        _t1(create_time="nan"),
    ],
    ids=[
        "jwt-exp-1e400",
        "jwt-exp-minus-1e400",
        "jwt-iat-1e400",
        "jwt-exp-nan",
        "jwt-exp-infinity",
        "jwt-exp-huge-int",
        "jwt-iat-huge-negative-int",
        "jwt-exp-bool",
        "jwt-exp-string",
        "jwt-exp-null",
        "jwt-exp-list",
        "t1-expire-1e400",
        "t1-expire-inf",
        "t1-expire-huge-int",
        "t1-expire-empty",
        "t1-create-1e400",
        "t1-create-nan",
    ],
)
def test_tokens_with_absurd_times_are_refused_as_invalid(token: str) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, secrets, session_id=SID, now=NOW)
    assert info.value.code == "invalid_token"
    assert info.value.message in (
        "the token has invalid times",
        'the token is invalid: Token is missing the "exp" claim',  # exp: null
    )


def test_times_given_as_integral_floats_are_accepted() -> None:
    claims = verify_token(
        _jwt_with_raw_claims(exp=f"{NOW + 60}.0", iat=f"{NOW}.5"), secrets, session_id=SID, now=NOW
    )
    assert (claims.expire_time, claims.create_time) == (NOW + 60, NOW)


def test_rs256_tokens_of_an_application_as_each_vonage_sdk_mints_them() -> None:
    import jwt as pyjwt

    from salon.tokens import generate_application_token, new_rsa_key_pair

    app_id = "29f760f8-7ce1-46c9-ade3-f2dedee4ed5f"
    sid = encode_session_id(app_id)
    private_key, public_key = new_rsa_key_pair()
    other_private, _ = new_rsa_key_pair()
    keys = {app_id: public_key}.get
    # vonage-video (Python): subject, layout classes as a JSON list.
    python = generate_application_token(
        app_id, private_key, sid, role="moderator", initial_layout_class_list=["a", "b"]
    )
    claims = verify_token(python, secrets, session_id=sid, public_key_for=keys)
    assert (claims.api_key, claims.role, claims.initial_layout_class_list) == (
        app_id,
        Role.MODERATOR,
        ("a", "b"),
    )
    # opentok for Node in its Vonage mode: sub, layout classes space-joined, possibly empty.
    now = int(time.time())
    node = {
        "scope": "session.connect",
        "session_id": sid,
        "role": "subscriber",
        "initial_layout_class_list": "x y",
        "exp": now + 86400,
        "sub": "video",
        "acl": {"paths": {"/session/**": {}}},
        "jti": "j",
        "iat": now,
        "application_id": app_id,
    }
    claims = verify_token(pyjwt.encode(node, private_key, algorithm="RS256"), secrets, public_key_for=keys)
    assert (claims.role, claims.initial_layout_class_list) == (Role.SUBSCRIBER, ("x", "y"))
    for bad, message in [
        (pyjwt.encode({**node, "sub": "messaging"}, private_key, algorithm="RS256"), "not a video token"),
        (pyjwt.encode({**node, "scope": "x"}, private_key, algorithm="RS256"), "session.connect"),
        (pyjwt.encode(node, other_private, algorithm="RS256"), "signature"),
        (pyjwt.encode({**node, "application_id": "other"}, private_key, algorithm="RS256"), "does not exist"),
        (pyjwt.encode({**node, "iss": "other"}, private_key, algorithm="RS256"), "disagree"),
    ]:
        with pytest.raises(TokenError) as info:
            verify_token(bad, secrets, public_key_for=keys)
        assert message in info.value.message
    # Without a public key lookup (a project with a secret), an RS256 token names no application.
    with pytest.raises(TokenError, match="application"):
        verify_token(python, secrets)


@pytest.mark.parametrize("use_jwt", [True, False])
def test_a_token_verifies_against_any_of_the_projects_secrets(use_jwt: bool) -> None:
    old, new, other = SECRET, "f" * 40, "e" * 40
    session_id = encode_session_id(KEY, "")
    now = int(time.time())
    token = generate_token(KEY, old, session_id, expire_time=now + 600, use_jwt=use_jwt)
    claims = verify_token(token, lambda key: (new, old) if key == KEY else None, now=now)
    assert claims.api_key == KEY and claims.session_id == session_id
    with pytest.raises(TokenError) as info:
        verify_token(token, lambda key: (new, other), now=now)
    assert info.value.code == "invalid_signature"
    with pytest.raises(TokenError) as info:
        verify_token(token, lambda key: (), now=now)
    assert info.value.code == "unknown_project"
