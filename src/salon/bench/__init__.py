"""``salon bench``: benchmarks of a real salon server, run on this machine.

Loaded only when ``salon bench`` runs (the CLI holds just the options, in
:mod:`salon.cli.bench_options`). One module per benchmark; :mod:`salon.bench._harness` is what
they share (the server process, ``/proc`` readings, the machine description every report
carries).
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["BENCHMARKS", "run"]

#: ``salon bench <name>`` → (module, function).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "signalling": ("salon.bench.signalling", "run_signalling_bench"),
    "sfu": ("salon.bench.sfu", "run_sfu_bench"),
    "client": ("salon.bench.client", "run_client_bench"),
    "browser": ("salon.bench.browser", "run_browser_bench"),
    "soak": ("salon.bench.soak", "run_soak_bench"),
    "callbacks": ("salon.bench.callbacks", "run_callbacks_bench"),
    "archive": ("salon.bench.archive", "run_archive_bench"),
    "quality": ("salon.bench.quality", "run_quality_bench"),
    "stamping": ("salon.bench.stamping", "run_stamping_bench"),
}


def run(args: argparse.Namespace) -> int:
    """Run ``salon bench <args.bench_command>``; return its exit code."""
    module_name, function = BENCHMARKS[args.bench_command]
    runner = getattr(importlib.import_module(module_name), function)
    code: int = runner(args)
    return code
