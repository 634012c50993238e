"""TURN credentials and ICE server URLs (``salon.signalling.ice``)."""

from __future__ import annotations

import pytest

from salon.protocol import IceServer
from salon.signalling.ice import IceSettings, IceUrl, parse_ice_url, turn_rest_credentials

# Computed independently of salon, with:
#   printf '%s' '1700086400:conn-1' | openssl dgst -sha1 -hmac 'north-wind' -binary | base64
#   printf '%s' '1700000600:9aa6cda9-505b-442a-a82e-d006b536e0a1' \
#       | openssl dgst -sha1 -hmac 'a secret with spaces' -binary | base64
OPENSSL_VECTORS = [
    ("north-wind", "conn-1", 1_700_000_000.9, 86400, "1700086400:conn-1", "FsDI/JkiY+uw1GmjADn7XfXhHJ8="),
    (
        "a secret with spaces",
        "9aa6cda9-505b-442a-a82e-d006b536e0a1",
        1_700_000_000,
        600,
        "1700000600:9aa6cda9-505b-442a-a82e-d006b536e0a1",
        "Cbmg7iLrHsjshXKcJ/8YHdV6uNU=",
    ),
]


@pytest.mark.parametrize(("secret", "user", "now", "ttl", "username", "credential"), OPENSSL_VECTORS)
def test_turn_credentials_are_the_expiry_and_user_signed_with_hmac_sha1(
    secret: str, user: str, now: float, ttl: int, username: str, credential: str
) -> None:
    assert turn_rest_credentials(secret, user, now=now, ttl=ttl) == (username, credential)


def test_turn_credentials_refuse_an_empty_secret_or_a_lifetime_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        turn_rest_credentials("", "c", now=0, ttl=60)
    with pytest.raises(ValueError, match="positive number of seconds"):
        turn_rest_credentials("s", "c", now=0, ttl=0)


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("stun:stun.example.com", IceUrl("stun", "stun.example.com", 3478)),
        ("stuns:stun.example.com", IceUrl("stuns", "stun.example.com", 5349)),
        ("turn:127.0.0.1:3479", IceUrl("turn", "127.0.0.1", 3479)),
        ("turn:turn.example.com?transport=tcp", IceUrl("turn", "turn.example.com", 3478, "tcp")),
        ("turns:[2001:db8::1]:443?transport=tcp", IceUrl("turns", "2001:db8::1", 443, "tcp")),
        ("turn:[::1]", IceUrl("turn", "::1", 3478)),
    ],
)
def test_ice_urls_are_parsed_with_their_default_ports(url: str, parsed: IceUrl) -> None:
    assert parse_ice_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://turn.example.com", "must start with stun:, stuns:, turn: or turns:"),
        ("TURN:turn.example.com", "must start with"),
        ("turn.example.com:3478", "must start with"),
        ("turn://turn.example.com", "has no '//'"),
        ("turn:", "not a host name"),
        ("turn:bad_host", "not a host name"),
        ("turn:example.com:0", "within 1-65535"),
        ("turn:example.com:http", "within 1-65535"),
        ("turn:example.com?transport=sctp", "?transport=udp or ?transport=tcp"),
        ("stun:example.com?transport=udp", "takes no query"),
        ("turn:[::1", "unclosed '['"),
        ("turn:[not-ipv6]", "not an IPv6 address"),
    ],
)
def test_a_bad_ice_url_is_refused_with_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"ICE server URL .*") as info:
        parse_ice_url(url)
    assert problem in str(info.value)


def test_a_connection_gets_stun_without_credentials_and_turn_with_credentials_minted_for_it() -> None:
    settings = IceSettings(
        ("stun:stun.example.com", "turn:turn.example.com", "turns:turn.example.com:443?transport=tcp"),
        turn_secret="north-wind",
    )
    servers = settings.for_connection("conn-1", now=1_700_000_000)
    assert servers == [
        IceServer(urls=["stun:stun.example.com"]),
        IceServer(
            urls=["turn:turn.example.com", "turns:turn.example.com:443?transport=tcp"],
            username="1700086400:conn-1",
            credential="FsDI/JkiY+uw1GmjADn7XfXhHJ8=",
        ),
    ]


def test_turn_credentials_expire_after_the_configured_lifetime() -> None:
    settings = IceSettings(("turn:t.example.com",), turn_secret="s", turn_ttl=600)
    (turn,) = settings.for_connection("c", now=1000)
    assert turn.username == "1600:c"


def test_static_turn_credentials_are_the_same_for_every_connection() -> None:
    settings = IceSettings(("turn:t.example.com",), turn_username="salon", turn_password="pw")
    assert settings.for_connection("a", now=0) == settings.for_connection("b", now=99)
    assert settings.for_connection("a", now=0)[0].credential == "pw"


def test_no_ice_servers_gives_an_empty_list() -> None:
    assert IceSettings().for_connection("c", now=0) == []


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"urls": ("turn:t.example.com",)}, "turn: URLs need credentials"),
        ({"urls": ("stun:s.example.com",), "turn_secret": "s"}, "no turn: or turns: ICE server URL"),
        ({"urls": ("turn:t.example.com",), "turn_secret": ""}, "the TURN secret is empty"),
        ({"urls": ("turn:t.example.com",), "turn_username": "u"}, "go together"),
        (
            {"urls": ("turn:t.example.com",), "turn_secret": "s", "turn_username": "u", "turn_password": "p"},
            "not both",
        ),
        ({"urls": ("turn:t.example.com",), "turn_secret": "s", "turn_ttl": 0}, "positive number of seconds"),
        ({"urls": ("turn://t.example.com",), "turn_secret": "s"}, "has no '//'"),
    ],
)
def test_inconsistent_ice_settings_are_refused_with_what_is_wrong(
    kwargs: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError) as info:
        IceSettings(**kwargs)  # type: ignore[arg-type]
    assert problem in str(info.value)


def test_the_secret_and_password_never_appear_in_repr_or_errors() -> None:
    settings = IceSettings(("turn:t.example.com",), turn_secret="hush-hush-secret")
    assert "hush-hush-secret" not in repr(settings)
    static = IceSettings(("turn:t.example.com",), turn_username="u", turn_password="hush-hush-pw")
    assert "hush-hush-pw" not in repr(static)
    with pytest.raises(ValueError) as info:
        IceSettings(("stun:s.example.com",), turn_secret="hush-hush-secret")
    assert "hush-hush-secret" not in str(info.value)
