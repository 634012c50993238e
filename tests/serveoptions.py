"""``salon serve``'s options checked without a server: what it would start with, what it refuses.

Use the fixture by importing it into a test module, as :mod:`tests.redis`'s::

    from tests.serveoptions import ServeOptions, serve_options_fixture  # noqa: F401
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

import pytest

from salon.cli.main import main
from salon.server.config import ServerConfig


class ServeOptions:
    """``salon serve`` run through :func:`salon.cli.main.main` with the server's start replaced:
    what it would have started with, or how it refused its options."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: pathlib.Path
    ) -> None:
        import salon.server.run

        self.started: list[ServerConfig] = []

        def run_server(config: ServerConfig, **kwargs: object) -> None:
            self.started.append(config)

        monkeypatch.setattr(salon.server.run, "run_server", run_server)
        self.base = ["serve", "--port", "0", "--data-dir", str(data_dir), "--no-media"]
        self._capsys = capsys

    def config(self, *flags: str) -> ServerConfig:
        """The configuration ``salon serve`` with ``flags`` (and :attr:`base`) starts with."""
        assert main([*self.base, *flags]) == 0
        return self.started.pop()

    def assert_refused(self, cases: Iterable[tuple[list[str], str]]) -> None:
        """Each of ``cases`` (flags, what the error names) is refused: exit status 1, the error
        on stderr, no server started."""
        self._capsys.readouterr()
        for bad, message in cases:
            assert main([*self.base, *bad]) == 1, bad
            assert message in self._capsys.readouterr().err, bad
        assert self.started == []


@pytest.fixture(name="serve_options")
def serve_options_fixture(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> ServeOptions:
    return ServeOptions(monkeypatch, capsys, tmp_path)
