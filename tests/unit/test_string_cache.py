"""Parsing messages keeps none of their string values: pydantic's JSON parser would otherwise
cache every value under 64 characters (up to 16,384 of them per process), and the values of
salon's messages are mostly unique IDs, so a long-running server only grew
(``salon bench soak``, docs/benchmarks.md).

The cache is process-wide and cannot be cleared, so the measurements run in a fresh
interpreter (in a process whose cache is already full, new values only replace old ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MESSAGES = 4000

_PROBE = """
import gc, json, sys, tracemalloc, uuid
from pydantic import TypeAdapter
from salon.media.channel import CloseRouterRequest, TransportClosedEvent
from salon.media.channel import decode_main_message, decode_worker_message
from salon.server.rest import SignalBody
from salon.protocol.messages import client_message_adapter, server_message_adapter

MESSAGES = int(sys.argv[1])
plain = TypeAdapter(dict[str, str])
cases = {
    "premise: pydantic's default": lambda t: plain.validate_json(json.dumps({"id": t})),
    "signalling client messages": lambda t: client_message_adapter.validate_json(
        json.dumps({"type": "unsubscribe", "request_id": 1, "subscription_id": t})
    ),
    "signalling server messages (client SDK)": lambda t: server_message_adapter.validate_json(
        json.dumps(
            {"type": "stream_destroyed", "stream_id": t, "connection_id": "c", "reason": "clientDisconnected"}
        )
    ),
    "channel: main to worker": lambda t: decode_main_message(
        CloseRouterRequest(id=1, router_id=t).model_dump_json().encode()
    ),
    "channel: worker to main": lambda t: decode_worker_message(
        TransportClosedEvent(router_id="r", transport_id=t, reason="closed", by_peer=False)
        .model_dump_json()
        .encode()
    ),
    "REST signal body": lambda t: SignalBody.model_validate_json(json.dumps({"type": "chat", "data": t})),
}
retained = {}
for name, parse in cases.items():
    texts = [str(uuid.uuid4()) for _ in range(MESSAGES)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for text in texts:
        parse(text)
    gc.collect()
    retained[name] = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
print(json.dumps(retained))
"""


def test_parsing_keeps_no_string_values() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(MESSAGES)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    retained: dict[str, int] = json.loads(result.stdout)
    # The premise: with pydantic's default, about 64 bytes or more stay per unique value, so
    # the checks below can fail.
    assert retained.pop("premise: pydantic's default") > MESSAGES * 40
    for name, size in retained.items():
        assert size < MESSAGES * 8, f"{name}: {size} bytes kept after {MESSAGES} messages"
