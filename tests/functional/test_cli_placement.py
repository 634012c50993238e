"""``salon serve --node-url`` and ``--placement-margin`` (placement by load in a cluster)."""

from __future__ import annotations

from salon.server.config import DEFAULT_PLACEMENT_MARGIN
from tests.serveoptions import ServeOptions, serve_options_fixture  # noqa: F401


def test_serve_takes_the_placement_options(serve_options: ServeOptions) -> None:
    defaults = serve_options.config()
    assert (defaults.node_url, defaults.placement_margin) == (None, DEFAULT_PLACEMENT_MARGIN)
    chosen = serve_options.config("--node-url", "https://node-b.example.com/", "--placement-margin", "0")
    assert (chosen.node_url, chosen.placement_margin) == ("https://node-b.example.com", 0)
    serve_options.assert_refused(
        [
            (["--placement-margin", "-1"], "--placement-margin"),
            (["--node-url", "node-b.example.com"], "--node-url"),
            (["--node-url", "ws://node-b"], "--node-url"),
        ]
    )
