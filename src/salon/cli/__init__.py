"""The ``salon`` command: ``main(argv)`` is the whole CLI, testable without a subprocess."""

from salon.cli.main import main

__all__ = ["main"]
