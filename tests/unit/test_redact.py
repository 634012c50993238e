"""Log records are redacted as they are made: tokens, JWTs and registered secrets."""

from __future__ import annotations

import logging
import time

import pytest

from salon.ids import encode_session_id
from salon.redact import install, redact, register_secret
from salon.tokens import generate_token

SESSION = encode_session_id("47000001", "")
SECRET = "0123456789abcdef0123456789abcdef01234567"


def test_tokens_jwts_and_registered_secrets_are_redacted() -> None:
    register_secret(SECRET, "short")
    jwt_token = generate_token("47000001", SECRET, SESSION, expire_time=int(time.time()) + 60)
    t1 = generate_token("47000001", SECRET, SESSION, expire_time=int(time.time()) + 60, use_jwt=False)
    text = f"token={jwt_token} legacy={t1} secret={SECRET} cut={jwt_token[:30]} a short word"
    clean = redact(text)
    for value in (jwt_token, t1, SECRET, jwt_token[:30]):
        assert value not in clean
    assert "a short word" in clean and clean.count("[redacted]") == 4


def test_download_url_signatures_are_redacted() -> None:
    sig = "9f2c" * 16
    local = f'"GET /v2/archive-download/b40e?expires=1796332816&signature={sig} HTTP/1.1" 200'
    assert redact(local) == (
        '"GET /v2/archive-download/b40e?expires=1796332816&signature=[redacted] HTTP/1.1" 200'
    )
    s3 = f"https://s3.example/b/k?X-Amz-Expires=600&X-Amz-Signature={sig}&x=1"
    assert redact(s3) == "https://s3.example/b/k?X-Amz-Expires=600&X-Amz-Signature=[redacted]&x=1"


def test_installed_records_are_redacted_in_message_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(SECRET)
    install()
    logger = logging.getLogger("salon.test.redact")
    with caplog.at_level(logging.DEBUG, logger="salon.test.redact"):
        logger.debug("params %s", (SECRET, "x"))
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            logger.exception("failed")
    text = "\n".join(caplog.messages) + caplog.text
    assert SECRET not in text and "[redacted]" in text
    assert logging.getLogger("sqlalchemy.engine").getEffectiveLevel() >= logging.INFO
