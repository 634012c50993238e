"""Composed archive layouts: the CSS subset OpenTok documents, and each predefined layout's tiles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salon.archive.layout import (
    LayoutSpec,
    Tile,
    compute_layout,
    parse_layout,
    parse_resolution,
    parse_stylesheet,
)


def cams(count: int) -> list[tuple[str, list[str], str]]:
    return [(f"s{i}", [], "camera") for i in range(count)]


def rects(tiles: list[Tile]) -> dict[str, tuple[int, int, int, int]]:
    return {t.stream_id: (t.x, t.y, t.w, t.h) for t in tiles}


# -- the stylesheet parser ---------------------------------------------------------------------


def test_the_documented_subset_parses() -> None:
    sheet = parse_stylesheet(
        """
        /* OpenTok's example */
        stream.instructor { position: absolute; width: 100%; height: 50%; }
        stream.student, .guest {
            position: absolute; top: 50%; left: 0px; right: 0; bottom: 10px;
            z-index: 3; object-fit: cover
        }
        .a.b { width: 12.5%; height: 120px; z-index: auto; left: -10px }
        stream {}
        """
    )
    assert len(sheet.rules) == 4
    selectors = sheet.rules[1].selectors
    assert selectors[0].stream and selectors[0].classes == {"student"}
    assert not selectors[1].stream and selectors[1].classes == {"guest"}
    assert sheet.rules[2].selectors[0].classes == {"a", "b"}
    assert dict(sheet.rules[1].declarations)["object-fit"] == "cover"
    assert dict(sheet.rules[1].declarations)["z-index"] == 3
    assert sheet.rules[3].declarations == ()
    # The reference's minimal stylesheet.
    assert len(parse_stylesheet("stream{}").rules) == 1
    assert parse_stylesheet("").rules == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stream { color: red }", "line 1: unsupported property 'color'"),
        ("stream { float: left }", "unsupported property 'float'"),
        ("div { width: 10px }", "unsupported selector 'div'"),
        ("stream > .a { width: 10px }", "unsupported selector"),
        ("#main {}", "unsupported selector '#main'"),
        ("stream:first-child {}", "unsupported selector"),
        ("\n\nstream { width: -5px }", "line 3: width cannot be negative"),
        ("stream { width: 5 }", "width needs a unit"),
        ("stream { width: 5em }", "invalid value '5em' for width"),
        ("stream { top: 1px !important }", "!important is not supported"),
        ("stream { position: relative }", "unsupported position 'relative'"),
        ("stream { object-fit: fill }", "unsupported object-fit 'fill'"),
        ("stream { z-index: 1.5 }", "z-index must be an integer"),
        ("stream { width }", "expected `property: value`"),
        ("stream { width: }", "width has no value"),
        ("@media print { stream {} }", "at-rules are not supported"),
        ("stream { width: 1px", "block not closed"),
        ("stream { a { } }", "nested block"),
        ("stream {} }", "unexpected `}`"),
        ("stream", "a selector without a `{ … }` block"),
        ("stream, { }", "empty selector"),
        ("/* open", "unterminated comment"),
        ("stream { width: 1e9px }", "invalid value"),
        ("stream { width: 99999999px }", "out of range"),
    ],
)
def test_anything_else_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="stylesheet") as caught:
        parse_stylesheet(text)
    assert message in str(caught.value)


def test_a_huge_stylesheet_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than"):
        parse_stylesheet("stream {}" * 10000)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("stream.focus{}:;,/*-% 0123456789pxabz!@#\n")), max_size=80))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        sheet = parse_stylesheet(text)
    except ValueError as exc:
        assert str(exc).startswith("stylesheet")
        return
    # What parses also lays out.
    compute_layout(
        LayoutSpec("custom", sheet), None, (640, 480), [("a", ["focus"], "camera"), ("b", [], "camera")]
    )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_unicode_never_raises_anything_but_value_error(text: str) -> None:
    try:
        parse_stylesheet(text)
    except ValueError:
        pass


# -- layout bodies -----------------------------------------------------------------------------


def test_layout_bodies_are_checked_as_opentok_checks_them() -> None:
    assert parse_layout().type == "bestFit"
    assert parse_layout("pip").type == "pip"
    spec = parse_layout("bestFit", None, "verticalPresentation")
    assert spec.screenshare_type == "verticalPresentation"
    custom = parse_layout("custom", "stream { width: 50% }")
    assert custom.stylesheet is not None and len(custom.stylesheet.rules) == 1
    for args, message in [
        (("grid",), "layout type must be one of"),
        (("custom",), "needs a stylesheet"),
        (("custom", "stream { color: red }"), "unsupported property"),
        (("pip", "stream {}"), "only allowed with the custom"),
        (("pip", None, "pip"), "requires the layout type bestFit"),
        (("bestFit", None, "custom"), "screenshareType must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_layout(*args)


def test_resolutions() -> None:
    assert parse_resolution("1280x720") == (1280, 720)
    assert parse_resolution("1080x1920") == (1080, 1920)
    for bad in ("1280X720", "800x600", "", None, 5):
        with pytest.raises(ValueError, match="resolution must be one of"):
            parse_resolution(bad)


# -- predefined layouts ------------------------------------------------------------------------


def test_best_fit_grids() -> None:
    assert rects(compute_layout("bestFit", None, (1280, 720), cams(1))) == {"s0": (0, 0, 1280, 720)}
    assert rects(compute_layout("bestFit", None, (1280, 720), cams(2))) == {
        "s0": (0, 0, 640, 720),
        "s1": (640, 0, 640, 720),
    }
    four = rects(compute_layout("bestFit", None, (1280, 720), cams(4)))
    assert four == {
        "s0": (0, 0, 640, 360),
        "s1": (640, 0, 640, 360),
        "s2": (0, 360, 640, 360),
        "s3": (640, 360, 640, 360),
    }
    # Three: 2x2 with the last row centred.
    assert rects(compute_layout("bestFit", None, (1280, 720), cams(3)))["s2"] == (320, 360, 640, 360)
    # Five: 3 + 2 centred.
    five = rects(compute_layout("bestFit", None, (1200, 720), cams(5)))
    assert five["s0"] == (0, 0, 400, 360)
    assert five["s3"] == (200, 360, 400, 360)
    assert five["s4"] == (600, 360, 400, 360)
    # Grid sizes by count.
    for count, (cols, rows) in {6: (3, 2), 7: (3, 3), 9: (3, 3), 10: (4, 3), 12: (4, 3), 16: (4, 4)}.items():
        tiles = compute_layout("bestFit", None, (1280, 720), cams(count))
        assert len({t.x for t in tiles if t.y == 0}) == cols, count
        assert len({t.y for t in tiles}) == rows, count
    # Portrait: two stack.
    assert rects(compute_layout("bestFit", None, "720x1280", cams(2))) == {
        "s0": (0, 0, 720, 640),
        "s1": (0, 640, 720, 640),
    }
    # Classes have no effect; at most 16.
    assert len(compute_layout("bestFit", None, (1280, 720), cams(20))) == 16
    assert all(t.fit == "contain" for t in compute_layout("bestFit", None, (640, 480), cams(5)))


def test_best_fit_keeps_prioritised_streams_when_there_are_too_many() -> None:
    streams = cams(18)
    streams[0] = ("s0", ["focus"], "camera")
    streams[1] = ("s1", [], "screen")
    shown = [t.stream_id for t in compute_layout("bestFit", None, (1280, 720), streams)]
    # The focus and screen share stay, the oldest plain streams go, the order is kept.
    assert shown[:2] == ["s0", "s1"] and "s2" not in shown and "s3" not in shown
    assert shown == sorted(shown, key=lambda s: int(s[1:]))


def test_tiles_cover_the_output_without_overlap() -> None:
    for count in range(1, 17):
        tiles = compute_layout("bestFit", None, (1280, 720), cams(count))
        area = sum(t.w * t.h for t in tiles)
        cols = len({t.x for t in tiles if t.y == 0})
        rows = len({t.y for t in tiles})
        assert area == pytest.approx(1280 * 720 * count / (cols * rows), rel=0.01)
        for a in tiles:
            for b in tiles:
                if a is not b:
                    assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y


def test_pip() -> None:
    tiles = compute_layout("pip", None, (1280, 720), cams(3))
    assert [t.stream_id for t in tiles] == ["s0", "s1"]
    assert rects(tiles)["s0"] == (0, 0, 1280, 720)
    corner = tiles[1]
    assert corner.z > tiles[0].z
    assert (corner.w, corner.h) == (320, 180)
    assert corner.x + corner.w < 1280 and corner.x + corner.w > 1200
    assert corner.y + corner.h < 720 and corner.y + corner.h > 660
    # "full" chooses the full-size stream; the first other one is in the corner.
    tiles = compute_layout("pip", None, (640, 480), [("a", [], "camera"), ("b", ["full"], "camera")])
    assert [t.stream_id for t in tiles] == ["b", "a"]
    assert rects(tiles)["b"] == (0, 0, 640, 480)
    assert len(compute_layout("pip", None, (640, 480), cams(1))) == 1
    assert compute_layout("pip", None, (640, 480), []) == []


def test_vertical_presentation() -> None:
    streams = [("a", [], "camera"), ("b", ["focus"], "camera"), ("c", [], "camera"), ("d", [], "camera")]
    tiles = rects(compute_layout("verticalPresentation", None, (1280, 720), streams))
    assert tiles["b"] == (256, 0, 1024, 720)
    assert tiles["a"] == (0, 0, 256, 240)
    assert tiles["c"] == (0, 240, 256, 240)
    assert tiles["d"] == (0, 480, 256, 240)
    # Without a focus class the first stream is the focus; alone it fills the output.
    assert rects(compute_layout("verticalPresentation", None, (640, 480), cams(2)))["s0"] == (
        128,
        0,
        512,
        480,
    )
    assert rects(compute_layout("verticalPresentation", None, (640, 480), cams(1)))["s0"] == (0, 0, 640, 480)


def test_horizontal_presentation() -> None:
    streams = [("a", [], "camera"), ("b", [], "camera"), ("c", ["focus"], "camera")]
    tiles = rects(compute_layout("horizontalPresentation", None, (1280, 720), streams))
    assert tiles["c"] == (0, 0, 1280, 576)
    assert tiles["a"] == (0, 576, 640, 144)
    assert tiles["b"] == (640, 576, 640, 144)


def test_screenshare_type_puts_the_screen_share_in_focus() -> None:
    streams = [("a", ["focus"], "camera"), ("b", [], "camera"), ("s", [], "screen")]
    spec = parse_layout("bestFit", None, "horizontalPresentation")
    tiles = rects(compute_layout(spec, None, (1280, 720), streams))
    assert tiles["s"] == (0, 0, 1280, 576)
    assert tiles["a"][1] == 576 and tiles["b"][1] == 576
    pip = compute_layout("bestFit", None, (1280, 720), streams, screenshare_type="pip")
    assert [t.stream_id for t in pip] == ["s", "a"]
    # Without a screen share it stays best fit.
    cameras = compute_layout(spec, None, (1280, 720), streams[:2])
    assert rects(cameras) == {"a": (0, 0, 640, 720), "b": (640, 0, 640, 720)}
    # screenshareType does nothing for other types.
    plain = compute_layout("verticalPresentation", None, (1280, 720), streams, screenshare_type="pip")
    assert rects(plain)["a"] == (256, 0, 1024, 720)


# -- custom layouts ----------------------------------------------------------------------------


def test_custom_layout_positions_sizes_and_stacking() -> None:
    sheet = parse_stylesheet(
        """
        stream { width: 50%; height: 50%; }
        stream.focus { top: 0; left: 0; width: 100%; height: 100%; z-index: -1; object-fit: cover }
        .corner { right: 10px; bottom: 20px; width: 160px; height: 120px; z-index: 5 }
        .stretch { left: 10%; right: 10%; top: 25%; bottom: 25%; width: auto; height: auto }
        """
    )
    streams = [
        ("plain", [], "camera"),
        ("main", ["focus"], "camera"),
        ("pic", ["corner"], "camera"),
        ("wide", ["stretch"], "camera"),
    ]
    tiles = compute_layout("custom", sheet, (640, 480), streams)
    # Drawing order: z, then stream order.
    assert [t.stream_id for t in tiles] == ["main", "plain", "wide", "pic"]
    by_id = {t.stream_id: t for t in tiles}
    assert by_id["main"] == Tile("main", 0, 0, 640, 480, -1, "cover")
    assert by_id["plain"] == Tile("plain", 0, 0, 320, 240, 0, "contain")
    assert by_id["pic"] == Tile("pic", 470, 340, 160, 120, 5, "contain")
    assert by_id["wide"] == Tile("wide", 64, 120, 512, 240, 0, "contain")


def test_custom_cascade_specificity_then_order() -> None:
    sheet = parse_stylesheet(
        """
        stream.a { width: 100px }
        .a { width: 200px; height: 100px }
        stream { width: 300px; height: 50px }
        .a.b { height: 10px }
        .a { height: 20px }
        """
    )
    tiles = rects(
        compute_layout(
            "custom",
            sheet,
            (640, 480),
            [("x", ["a"], "camera"), ("y", ["a", "b"], "camera"), ("z", [], "camera")],
        )
    )
    assert tiles["x"] == (0, 0, 100, 20)  # stream.a beats .a and stream; the later .a wins on height
    assert tiles["y"] == (0, 0, 100, 10)  # .a.b is the most specific
    assert tiles["z"] == (0, 0, 300, 50)


def test_custom_streams_no_rule_matches_and_offscreen_ones_are_not_drawn() -> None:
    sheet = parse_stylesheet(".shown { width: 10% } .gone { left: 700px; width: 10px }")
    tiles = compute_layout(
        "custom",
        sheet,
        (640, 480),
        [("a", [], "camera"), ("b", ["shown"], "camera"), ("c", ["gone"], "camera")],
    )
    assert rects(tiles) == {"b": (0, 0, 64, 480)}
    # Partly outside: clipped to the output.
    clipped = compute_layout(
        "custom", parse_stylesheet("stream { left: -100px; width: 200px }"), (640, 480), cams(1)
    )
    assert rects(clipped) == {"s0": (0, 0, 100, 480)}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        compute_layout("bestFit", None, (640, 480), [("a", [], "camera"), ("a", [], "camera")])
    with pytest.raises(ValueError, match="layout type must be one of"):
        compute_layout("grid", None, (640, 480), cams(1))
    with pytest.raises(ValueError, match="needs a stylesheet"):
        compute_layout("custom", None, (640, 480), cams(1))
    with pytest.raises(ValueError, match="unsupported property"):
        compute_layout("custom", "stream { color: red }", (640, 480), cams(1))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["bestFit", "pip", "verticalPresentation", "horizontalPresentation"]),
    screenshare=st.sampled_from([None, "pip", "verticalPresentation", "horizontalPresentation"]),
    resolution=st.sampled_from(["640x480", "480x640", "1280x720", "720x1280", "1920x1080", "1080x1920"]),
    streams=st.lists(
        st.tuples(
            st.sampled_from(["", "focus", "full", "x"]), st.sampled_from(["camera", "screen", "custom"])
        ),
        max_size=20,
    ),
)
def test_predefined_tiles_stay_inside_the_output(
    kind: str, screenshare: str | None, resolution: str, streams: list[tuple[str, str]]
) -> None:
    width, height = parse_resolution(resolution)
    items = [(f"s{i}", [c] if c else [], video) for i, (c, video) in enumerate(streams)]
    tiles = compute_layout(
        kind, None, resolution, items, screenshare_type=screenshare if kind == "bestFit" else None
    )
    assert len(tiles) <= min(len(items), 16)
    assert len({t.stream_id for t in tiles}) == len(tiles)
    for tile in tiles:
        assert tile.w > 0 and tile.h > 0
        assert 0 <= tile.x and tile.x + tile.w <= width
        assert 0 <= tile.y and tile.y + tile.h <= height
    if items:
        assert tiles, "a layout with streams shows at least one"


def test_custom_layouts_show_16_streams_at_most_by_priority() -> None:
    streams = cams(20)
    streams[0] = ("s0", ["pinned"], "camera")
    sheet = parse_stylesheet("stream { width: 10px; height: 10px }")
    shown = [t.stream_id for t in compute_layout("custom", sheet, (640, 480), streams)]
    assert len(shown) == 16
    assert shown[0] == "s0" and shown[1:] == [f"s{i}" for i in range(5, 20)]
