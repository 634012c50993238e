"""Layout checks of the archive API (the stylesheet parser itself: tests/unit/archive/test_layout.py)."""

from __future__ import annotations

import pytest

from salon.archive.models import Layout
from salon.archive.service import check_layout
from salon.errors import InvalidRequestError


def test_layout_checks() -> None:
    assert check_layout(Layout("custom", "stream { width: 100% }")).type == "custom"
    assert check_layout(Layout("bestFit", None, "pip")).screenshare_type == "pip"
    for layout in (
        Layout("grid"),
        Layout("custom"),
        Layout("custom", "div {}"),
        Layout("pip", "stream {}"),
        Layout("pip", None, "pip"),
        Layout("bestFit", None, "custom"),
    ):
        with pytest.raises(InvalidRequestError):
            check_layout(layout)
