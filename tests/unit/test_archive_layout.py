"""The custom layout stylesheet subset (salon.archive.layout) and layout checks."""

from __future__ import annotations

import pytest

from salon.archive.layout import Rule, parse_stylesheet
from salon.archive.models import Layout
from salon.archive.service import check_layout
from salon.errors import InvalidRequestError


def test_the_documented_subset_parses() -> None:
    rules = parse_stylesheet(
        """/* OpenTok's example */
        stream.instructor { position: absolute; width: 100%; height: 50%; }
        stream, .focus.big { top: 0; left: 10px; right: -5%; bottom: 0.5%; z-index: 2; object-fit: COVER }
        stream {}"""
    )
    assert rules == [
        Rule(("stream.instructor",), (("position", "absolute"), ("width", "100%"), ("height", "50%"))),
        Rule(
            ("stream", ".focus.big"),
            (
                ("top", "0"),
                ("left", "10px"),
                ("right", "-5%"),
                ("bottom", "0.5%"),
                ("z-index", "2"),
                ("object-fit", "cover"),
            ),
        ),
        Rule(("stream",), ()),
    ]


@pytest.mark.parametrize(
    ("stylesheet", "message"),
    [
        ("", "no rules"),
        ("stream { color: red }", "'color' is not supported"),
        ("div { width: 50% }", "selector 'div'"),
        ("#id { width: 50% }", "selector '#id'"),
        ("stream > .a { width: 50% }", "selector"),
        ("stream { width: 50em }", "width must be a length"),
        ("stream { width: 50 }", "width must be a length"),
        ("stream { z-index: top }", "z-index must be an integer"),
        ("stream { position: fixed }", "position must be one of"),
        ("stream { object-fit: scale-down }", "object-fit must be one of"),
        ("stream { width }", "property: value"),
        ("stream { width: 1% ", "not closed"),
        ("stream { .a { width: 1% } }", "nested"),
        ("@media print { stream { width: 1% } }", "nested"),
        ("width: 1%", "expected"),
        ("stream { width: 1% }" * 2000, "at most"),
    ],
)
def test_anything_else_is_refused_with_a_reason(stylesheet: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_stylesheet(stylesheet)


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
