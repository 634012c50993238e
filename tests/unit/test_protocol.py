"""The wire protocol package: a leaf importable without the server, tolerant in the
server-to-client direction, strict in the client-to-server one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import salon.protocol
import salon.protocol.messages
from salon.protocol import (
    ConnectedMessage,
    ErrorCode,
    ErrorMessage,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    client_message_adapter,
    server_message_adapter,
)

SRC = Path(__file__).resolve().parents[2] / "src"
SERVER_ONLY = ("starlette", "fastapi", "sqlalchemy", "uvicorn", "alembic", "aiosqlite", "asyncpg")


def _modules_after(code: str) -> list[str]:
    """The modules loaded by a fresh interpreter running ``code`` (with this tree's src)."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout)
    return modules


def test_the_client_does_not_import_the_server_dependencies() -> None:
    modules = _modules_after("import salon.client")
    assert "salon.client" in modules
    assert "salon.protocol" in modules
    server = sorted(m for m in modules if m.split(".")[0] in SERVER_ONLY)
    assert server == [], f"import salon.client pulled in server modules: {server}"
    salon_parts = sorted(
        m for m in modules if m.startswith("salon.") and m.split(".")[1] in ("server", "signalling", "store")
    )
    assert salon_parts == [], f"import salon.client pulled in server parts of salon: {salon_parts}"


def test_the_protocol_imports_only_pydantic_and_the_standard_library() -> None:
    before = set(_modules_after("import salon"))
    after = set(_modules_after("import salon\nimport salon.protocol"))
    added = after - before
    allowed = set(sys.stdlib_module_names) | {
        "pydantic",
        "pydantic_core",
        "typing_extensions",
        "typing_inspection",
        "annotated_types",
    }
    foreign = sorted(
        m
        for m in added
        if m.split(".")[0] not in allowed
        and not m.startswith(("salon.protocol", "_sysconfigdata_"))  # the stdlib's sysconfig data
    )
    assert foreign == [], f"import salon.protocol pulled in {foreign}"
    assert "salon.protocol.messages" in added


CONNECTED: dict[str, Any] = {
    "type": "connected",
    "request_id": 1,
    "session_id": "1_abc",
    "connection": {"connection_id": "c1", "created_at": 1, "data": "", "region": "eu"},
    "role": "publisher",
    "connections": [],
    "streams": [
        {
            "stream_id": "s1",
            "connection_id": "c1",
            "created_at": 2,
            "name": "",
            "has_audio": True,
            "has_video": False,
            "video_type": None,
            "width": None,
            "height": None,
            "frame_rate": None,
            "simulcast": {"layers": 3},
        }
    ],
    "heartbeat_interval": 5.0,
    "heartbeat_timeout": 15.0,
    "ice_servers": [{"urls": ["stun:example.org"], "username": None, "credential": None, "ttl": 60}],
    "server_version": "99.0",
}


def test_a_server_message_with_unknown_fields_parses_in_the_client() -> None:
    message = server_message_adapter.validate_json(json.dumps(CONNECTED))
    assert isinstance(message, ConnectedMessage)
    assert message.connection.connection_id == "c1"
    assert message.streams[0].stream_id == "s1"
    assert message.ice_servers[0].urls == ["stun:example.org"]
    assert "server_version" not in message.model_dump()
    assert "region" not in message.connection.model_dump()

    error = server_message_adapter.validate_python(
        {"type": "error", "request_id": 7, "code": "not_found", "message": "no", "hint": "x"}
    )
    assert error == ErrorMessage(request_id=7, code=ErrorCode.NOT_FOUND, message="no")
    assert type(error.code) is ErrorCode  # a known code is the enum member, not a str

    # Codes and reasons a newer server added (§14) are kept as strings.
    newer = server_message_adapter.validate_python(
        {"type": "error", "request_id": 8, "code": "quota_exceeded", "message": "no"}
    )
    assert isinstance(newer, ErrorMessage) and newer.code == "quota_exceeded"
    gone = server_message_adapter.validate_python(
        {"type": "stream_destroyed", "stream_id": "s1", "connection_id": "c1", "reason": "archived"}
    )
    assert isinstance(gone, StreamDestroyedEvent) and gone.reason == "archived"

    event = server_message_adapter.validate_python(
        {"type": "stream_created", "stream": CONNECTED["streams"][0], "sequence": 12}
    )
    assert isinstance(event, StreamCreatedEvent)


def test_a_server_message_still_needs_its_own_fields() -> None:
    incomplete = {k: v for k, v in CONNECTED.items() if k != "role"}
    with pytest.raises(ValidationError, match="role"):
        server_message_adapter.validate_python(incomplete)


def test_the_server_refuses_unknown_fields_in_client_messages() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        client_message_adapter.validate_python(
            {"type": "unpublish", "request_id": 1, "stream_id": "s1", "force": True}
        )
    with pytest.raises(ValidationError, match="extra_forbidden"):
        client_message_adapter.validate_python(
            {"type": "connect", "request_id": 1, "session_id": "s", "token": "t", "rejoin": True}
        )


def test_every_message_model_says_which_direction_it_goes() -> None:
    from salon.protocol.messages import _ClientModel, _ServerModel

    models = [
        obj
        for obj in vars(salon.protocol.messages).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel)
    ]
    assert len(models) > 30
    for model in models:
        if model in (BaseModel, _ClientModel, _ServerModel):
            continue
        assert issubclass(model, _ClientModel) != issubclass(model, _ServerModel), model
        expected = "forbid" if issubclass(model, _ClientModel) else "ignore"
        assert model.model_config.get("extra") == expected, model


def test_the_browser_sdk_declarations_match_the_models() -> None:
    """protocol.d.ts is generated from the models: a change to one without the other fails."""
    from salon.protocol import typescript

    checked_in = SRC / "salon" / "web" / "sdk" / "protocol.d.ts"
    assert typescript.DEFAULT_PATH == checked_in
    assert checked_in.read_text(encoding="utf-8") == typescript.render(), (
        f"{checked_in} does not match salon.protocol: regenerate it with `{typescript.REGENERATE}`"
    )


def test_the_declarations_cover_every_message_and_code() -> None:
    from salon.protocol import CloseCode, typescript
    from salon.protocol.messages import CLIENT_MESSAGE_TYPES

    text = typescript.render()
    for kind in CLIENT_MESSAGE_TYPES:
        assert f'  type: "{kind}";' in text
    for member in server_message_adapter.json_schema()["oneOf"]:
        name = member["$ref"].rsplit("/", 1)[-1]
        assert f"export interface {name} {{" in text
    for code in ErrorCode:
        assert f'"{code.value}"' in text
    for close in CloseCode:
        assert f"| {close.value}" in text


def test_the_check_command_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from salon.protocol import typescript

    path = tmp_path / "protocol.d.ts"
    assert typescript.main(["--output", str(path), "--check"]) == 1
    assert typescript.main(["--output", str(path)]) == 0
    assert typescript.main(["--output", str(path), "--check"]) == 0
    path.write_text(path.read_text(encoding="utf-8").replace('"not_found"', '"gone"'), encoding="utf-8")
    assert typescript.main(["--output", str(path), "--check"]) == 1
    assert typescript.REGENERATE in capsys.readouterr().err


@pytest.mark.parametrize(
    "fields",
    [
        {"preferred_resolution": {"width": 0, "height": 240}},
        {"preferred_resolution": {"width": 320, "height": 16385}},
        {"preferred_resolution": {"width": "320", "height": 240}},
        {"preferred_resolution": {"width": 320.0, "height": 240}},
        {"preferred_resolution": {"width": True, "height": 240}},
        {"preferred_resolution": {"width": 320}},
        {"preferred_resolution": {"width": 320, "height": 240, "depth": 8}},
        {"preferred_resolution": [320, 240]},
        {"preferred_frame_rate": 0},
        {"preferred_frame_rate": -1},
        {"preferred_frame_rate": 241},
        {"preferred_frame_rate": "30"},
        {"preferred_frame_rate": True},
    ],
)
def test_subscription_preferences_are_checked_strictly(fields: dict[str, Any]) -> None:
    for base in (
        {"type": "set_subscription_preferences", "request_id": 1, "subscription_id": "s"},
        {"type": "subscribe", "request_id": 1, "stream_id": "x"},
    ):
        with pytest.raises(ValidationError):
            client_message_adapter.validate_json(json.dumps(base | fields))


def test_subscription_preferences_parse() -> None:
    message = client_message_adapter.validate_json(
        '{"type":"set_subscription_preferences","request_id":1,"subscription_id":"s",'
        '"preferred_resolution":{"width":320,"height":180},"preferred_frame_rate":7.5}'
    )
    assert isinstance(message, salon.protocol.SetSubscriptionPreferencesRequest)
    assert message.preferred_resolution == salon.protocol.PreferredResolution(width=320, height=180)
    assert message.preferred_frame_rate == 7.5
    cleared = client_message_adapter.validate_json(
        '{"type":"set_subscription_preferences","request_id":1,"subscription_id":"s"}'
    )
    assert isinstance(cleared, salon.protocol.SetSubscriptionPreferencesRequest)
    assert (cleared.preferred_resolution, cleared.preferred_frame_rate) == (None, None)


def test_video_events_accept_an_unknown_reason() -> None:
    known = server_message_adapter.validate_json(
        '{"type":"video_disabled","subscription_id":"s","stream_id":"x","reason":"quality"}'
    )
    assert isinstance(known, salon.protocol.VideoDisabledEvent)
    assert known.reason is salon.protocol.VideoReason.QUALITY
    newer = server_message_adapter.validate_json(
        '{"type":"video_enabled","subscription_id":"s","stream_id":"x","reason":"codec","more":1}'
    )
    assert isinstance(newer, salon.protocol.VideoEnabledEvent)
    assert newer.reason == "codec"
