"""The JSON log formatter, the REST log context, the event-loop lag probe and the metrics
address (salon.observability)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import pytest

from salon.ids import encode_session_id
from salon.observability.lag import LAG_BUCKETS, LoopLag
from salon.observability.logs import CONNECTION_ID, SESSION_ID, JsonFormatter, LogContext
from salon.observability.metrics import METRICS, parse_metrics_address
from salon.redact import register_secret
from salon.tokens import generate_token

SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"failed with {SECRET}")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.getLogger("salon.test").makeRecord(
        "salon.test", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_a_json_line_has_the_fields_and_the_ids_when_known() -> None:
    formatter = JsonFormatter("node-7")
    plain = json.loads(formatter.format(_record("hello %s", "world")))
    assert plain["message"] == "hello world"
    assert (plain["level"], plain["logger"], plain["node"], plain["process"]) == (
        "WARNING",
        "salon.test",
        "node-7",
        "main",
    )
    assert plain["time"].endswith("+00:00") and "T" in plain["time"]
    assert "session_id" not in plain and "connection_id" not in plain
    tokens = SESSION_ID.set("2_MX4xfn5"), CONNECTION_ID.set("c-42")
    try:
        line = formatter.format(_record("joined"))
    finally:
        SESSION_ID.reset(tokens[0])
        CONNECTION_ID.reset(tokens[1])
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["session_id"], entry["connection_id"]) == ("2_MX4xfn5", "c-42")


def test_a_json_line_never_carries_a_secret_or_a_token() -> None:
    register_secret(SECRET)
    session_id = encode_session_id("47000001")
    token = generate_token("47000001", SECRET, session_id, expire_time=int(time.time()) + 600)
    formatter = JsonFormatter("n")
    line = formatter.format(_record("connect with %s (secret %s)", token, SECRET, exc=True))
    entry = json.loads(line)
    assert SECRET not in line and token not in line and token[-30:] not in line
    assert "[redacted]" in entry["message"]
    assert "ValueError" in entry["exception"] and "[redacted]" in entry["exception"]


async def test_rest_requests_naming_a_session_log_with_its_ids() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append((SESSION_ID.get(), CONNECTION_ID.get()))

    middleware = LogContext(app)  # type: ignore[arg-type]
    for path in (
        "/v2/project/47000001/session/2_MX4xfn5/connection/c-9/mute",
        "/v2/project/47000001/session/2_MX4xfn5/stream",
        "/session/create",
        "/health",
    ):
        await middleware({"type": "http", "path": path}, None, None)  # type: ignore[arg-type]
    assert seen == [("2_MX4xfn5", "c-9"), ("2_MX4xfn5", None), (None, None), (None, None)]
    assert SESSION_ID.get() is None and CONNECTION_ID.get() is None  # reset after the request


async def test_loop_lag_sees_a_blocked_loop() -> None:
    lag = LoopLag(interval=0.02, window=10.0)
    lag.start()
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # the loop is blocked: the next tick is about 0.3 s late
        await asyncio.sleep(0.1)
    finally:
        lag.stop()
    assert lag.count >= 3
    assert 0.25 <= lag.max < 2.0, lag.max
    buckets = lag.buckets()
    assert len(buckets) == len(LAG_BUCKETS) + 1 and buckets[-1] == lag.count
    assert buckets == sorted(buckets)
    assert buckets[LAG_BUCKETS.index(0.25)] < lag.count  # one sample above 0.25 s


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("", None),
        ("off", None),
    ],
)
def test_metrics_address(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_metrics_address(text) == parsed


@pytest.mark.parametrize("text", ["9464", ":9464", "::1:9464", "host:port", "host:70000"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(ValueError):
        parse_metrics_address(text)


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "deployment.md").read_text(encoding="utf-8")
    for info in METRICS.values():
        exposed = info.name + ("_total" if info.kind == "counter" else "")
        assert exposed in docs, f"{exposed} is not in docs/deployment.md"
