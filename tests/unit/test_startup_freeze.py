"""salon serve's start-up freeze: Python's full collections come soon after, not after a
quarter of start-up's objects have piled up as garbage (docs/benchmarks.md, soak).

Each probe runs in a fresh interpreter: freezing is process-wide and permanent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import gc, json, sys
from salon.server.run import freeze_startup_objects

startup = [[i] for i in range(400_000)]  # start-up's long-lived objects
if sys.argv[1] == "freeze":
    freeze_startup_objects()
else:  # what the worker did before: freeze without a second collection
    gc.collect()
    gc.freeze()


class Connection:  # closed connections: garbage in reference cycles, as aioice's and uvicorn's
    def __init__(self):
        self.me = self


survivors = []
full = gc.get_stats()[2]["collections"]
for i in range(300_000):
    Connection()
    if i % 10 == 0:
        survivors.append([i])  # some objects live on, as sessions and caches do
print(json.dumps(gc.get_stats()[2]["collections"] - full))
"""


def _full_collections(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    count: int = json.loads(result.stdout)
    return count


def test_full_collections_run_after_the_startup_freeze() -> None:
    # The premise: frozen but still counted, start-up's objects hold full collections back.
    assert _full_collections("freeze-only") == 0
    assert _full_collections("freeze") >= 2
