"""The benchmarks are their own package, loaded only when ``salon bench`` runs."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

from salon.bench import BENCHMARKS
from salon.bench._harness import machine, machine_line, percentile, process_schedule
from salon.cli.main import _parser

_PROBE = """
import json, sys
import salon.cli.main
from salon.cli.main import _parser
parser = _parser()
parser.parse_args(["bench", "sfu", "--subscribers", "2"])
parser.parse_args(["serve", "--port", "0"])
loaded = sorted(m for m in sys.modules if m == "salon.bench" or m.startswith("salon.bench."))
import salon.bench.sfu
after = sorted(m for m in sys.modules if m == "salon.bench" or m.startswith("salon.bench."))
print(json.dumps({"loaded": loaded, "after": after}))
"""


def test_the_cli_does_not_import_the_benchmarks() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert modules["loaded"] == [], f"importing the CLI loaded {modules['loaded']}"
    # The probe sees the package when it is imported: the check above can fail.
    assert {"salon.bench", "salon.bench.sfu", "salon.bench._harness"} <= set(modules["after"])


def _bench_subcommands() -> set[str]:
    parser = _parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        bench = getattr(action, "choices", {}).get("bench")
        if isinstance(bench, argparse.ArgumentParser):
            for sub in bench._subparsers._group_actions if bench._subparsers else []:
                return set(getattr(sub, "choices", {}))
    return set()


def test_every_bench_subcommand_has_a_runner() -> None:
    assert _bench_subcommands() == set(BENCHMARKS)
    for name, (module, function) in BENCHMARKS.items():
        assert callable(getattr(importlib.import_module(module), function)), name


def test_machine_description() -> None:
    description = machine()
    assert description["cpus"] >= 1
    assert {"model", "kernel", "python", "aiortc", "memory_kb", "loadavg_before"} <= description.keys()
    assert f"{description['cpus']} CPUs" in machine_line(description)


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == 9.9


_BURN_THEN_SLEEP = """
import sys, time
end = time.process_time() + 0.2
while time.process_time() < end:
    pass
for _ in range(20):
    time.sleep(0.001)
sys.stdin.read()
"""


def test_process_schedule_counts_cpu_time_and_sleeps_of_a_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BURN_THEN_SLEEP], stdin=subprocess.PIPE)
    try:
        run, voluntary = 0.0, 0
        for _ in range(200):  # until the child has burnt its 0.2 s of CPU and slept 20 times
            run, voluntary, _involuntary = process_schedule(child.pid)
            if run >= 0.2 and voluntary >= 20:
                break
            time.sleep(0.05)
        assert run >= 0.2
        assert voluntary >= 20
    finally:
        child.communicate(b"")
    assert process_schedule(child.pid) == (0.0, 0, 0)  # gone (reaped)
