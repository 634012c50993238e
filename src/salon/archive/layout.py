"""Where each stream goes in a composed archive: OpenTok's predefined layouts and its CSS subset.

Pure functions, no media: :func:`compute_layout` turns a layout (type, stylesheet, screen-share
type), an output resolution and the streams in the archive into :class:`Tile` rectangles that
the composer draws in order (lowest ``z`` first).

**Predefined layouts** (OpenTok's "Video layouts for composed archives"):

* ``bestFit``: a grid of equal tiles, up to 16 streams, in the order given (layout classes have
  no effect): 1 stream fills the output, 2 side by side (stacked in a portrait output), 3-4 in
  2x2, 5-6 in 3x2, 7-9 in 3x3, 10-12 in 4x3, 13-16 in 4x4 (rows and columns swapped in a
  portrait output); an incomplete last row is centred.
* ``pip``: the first stream whose class list has ``full`` fills the output (the first stream
  when none has it); the first other stream sits in the bottom-right corner, a quarter of the
  output's width and height, above it. Only these two are shown.
* ``verticalPresentation``: the first stream with the ``focus`` class (the first stream when
  none has it) takes the right 80% of the output; the others share the left 20% column,
  dividing its height evenly.
* ``horizontalPresentation``: the focus stream takes the top 80%; the others share the bottom
  20% row, dividing its width evenly.
* With ``screenshareType`` (only with ``bestFit``), as soon as a screen-sharing stream is in the
  archive the layout becomes that type, with the (first) screen share in the focus (``full``
  for ``pip``) position whatever the classes say.

Videos keep their aspect ratio inside their tile (``contain``: letterboxed), as OpenTok's are.

When there are more streams than positions, the streams shown are chosen by priority (OpenTok's
"stream prioritization rules"): streams with layout classes first, then screen shares, then the
most recently added; the chosen ones keep their order.

**Custom layouts** (``custom`` with a ``stylesheet``): every stream is a ``stream`` element with
its layout classes, absolutely positioned in the output. The accepted CSS is the subset OpenTok
documents for layouts; :func:`parse_stylesheet` refuses anything else with a ``ValueError``
saying what and where:

* selectors ``stream``, ``.class``, and compounds ``stream.a.b`` / ``.a.b``, in comma lists;
* properties ``position`` (``absolute`` or ``fixed``: both place the stream in the output),
  ``top``, ``left``, ``right``, ``bottom``, ``width``, ``height`` (``0``, ``Npx``, ``N%`` of the
  output's width or height, or ``auto``; sizes not negative), ``z-index`` (an integer or
  ``auto``) and ``object-fit`` (``contain`` or ``cover``);
* comments. No at-rules, no ``!important``, no other selector or property.

The cascade is CSS's: for each property, the matching declaration with the highest specificity
(classes, then the ``stream`` type) wins, the later one on a tie. A stream that no rule matches
is not drawn (its audio is still mixed). Unset offsets are 0, an unset width or height is the
output's (or what ``left`` + ``right`` / ``top`` + ``bottom`` leave), the default fit is
``contain``. Equal ``z-index`` values stack in stream order (later on top).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "LAYOUT_TYPES",
    "MAX_STREAMS",
    "RESOLUTIONS",
    "SCREENSHARE_TYPES",
    "LayoutSpec",
    "LayoutStream",
    "Rule",
    "Selector",
    "Stylesheet",
    "Tile",
    "compute_layout",
    "parse_layout",
    "parse_resolution",
    "parse_stylesheet",
]

LAYOUT_TYPES = ("bestFit", "pip", "verticalPresentation", "horizontalPresentation", "custom")
SCREENSHARE_TYPES = ("bestFit", "pip", "verticalPresentation", "horizontalPresentation")
RESOLUTIONS = ("640x480", "480x640", "1280x720", "720x1280", "1920x1080", "1080x1920")
MAX_STREAMS = 16
"""Streams a layout shows at most (OpenTok's best fit grid holds 16)."""

MAX_STYLESHEET_CHARS = 65536
_PIP_CORNER = 0.25
_PRESENTATION_SHARE = 0.8

FIT_CONTAIN = "contain"
FIT_COVER = "cover"


class Tile(NamedTuple):
    """One stream's rectangle in the output, in pixels (``x``, ``y``: its top-left corner)."""

    stream_id: str
    x: int
    y: int
    w: int
    h: int
    z: int
    fit: str


class LayoutStream(NamedTuple):
    """A stream as the layout sees it: its id, layout classes and video type."""

    stream_id: str
    layout_classes: Sequence[str] = ()
    video_type: str = "camera"
    """``camera``, ``screen`` or ``custom`` (OpenTok's ``videoType``)."""


# -- the stylesheet ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """``stream`` and/or classes, all of which a stream must have."""

    classes: frozenset[str]
    stream: bool

    @property
    def specificity(self) -> tuple[int, int]:
        return (len(self.classes), 1 if self.stream else 0)

    def matches(self, classes: frozenset[str]) -> bool:
        return self.classes <= classes


@dataclass(frozen=True)
class Rule:
    selectors: tuple[Selector, ...]
    declarations: tuple[tuple[str, str | float | int | None], ...]
    """(property, value) in source order. Lengths are ``"12px"``/``"50%"`` strings normalised
    to :class:`_Length` at compute time; ``None`` is ``auto``."""


@dataclass(frozen=True)
class Stylesheet:
    rules: tuple[Rule, ...] = ()
    text: str = field(default="", compare=False)


_IDENT = r"-?[_a-zA-Z][_a-zA-Z0-9-]*"
_SELECTOR = re.compile(rf"^(stream)?((?:\.{_IDENT})*)$")
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(px|%)?$")
_INTEGER = re.compile(r"^[+-]?\d{1,9}$")
_OFFSETS = ("top", "left", "right", "bottom")
_SIZES = ("width", "height")
_PROPERTIES = ("position", *_OFFSETS, *_SIZES, "z-index", "object-fit")


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _strip_comments(text: str) -> str:
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("/*", pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        end = text.find("*/", start + 2)
        if end < 0:
            raise ValueError(f"stylesheet: unterminated comment at line {_line_of(text, start)}")
        out.append(text[pos:start])
        # Keep the newlines so that line numbers stay right.
        out.append("\n" * text.count("\n", start, end) + " ")
        pos = end + 2


def _parse_selector(raw: str, line: int) -> Selector:
    text = raw.strip()
    if not text:
        raise ValueError(f"stylesheet line {line}: empty selector")
    match = _SELECTOR.match(text)
    if match is None or (match.group(1) is None and not match.group(2)):
        raise ValueError(
            f"stylesheet line {line}: unsupported selector {text[:60]!r} "
            "(only `stream`, `.class` and compounds such as `stream.focus`)"
        )
    classes = frozenset(c for c in match.group(2).split(".") if c)
    return Selector(classes=classes, stream=match.group(1) is not None)


def _parse_length(prop: str, value: str, line: int, *, negative: bool) -> str | None:
    if value == "auto":
        return None
    match = _NUMBER.match(value)
    if match is None:
        raise ValueError(
            f"stylesheet line {line}: invalid value {value[:40]!r} for {prop} (a length in px or %, or auto)"
        )
    number = float(match.group(1))
    if not math.isfinite(number) or abs(number) > 1e6:
        raise ValueError(f"stylesheet line {line}: {prop} value {value[:40]!r} is out of range")
    unit = match.group(2)
    if unit is None and number != 0:
        raise ValueError(f"stylesheet line {line}: {prop} needs a unit (px or %): {value[:40]!r}")
    if number < 0 and not negative:
        raise ValueError(f"stylesheet line {line}: {prop} cannot be negative: {value[:40]!r}")
    return f"{number}{unit or 'px'}"


def _parse_declaration(raw: str, line: int) -> tuple[str, str | float | int | None] | None:
    text = raw.strip()
    if not text:
        return None
    name, colon, value = text.partition(":")
    prop = name.strip().lower()
    value = value.strip()
    if not colon:
        raise ValueError(f"stylesheet line {line}: expected `property: value`, got {text[:60]!r}")
    if prop not in _PROPERTIES:
        raise ValueError(
            f"stylesheet line {line}: unsupported property {prop[:40]!r} "
            f"(supported: {', '.join(_PROPERTIES)})"
        )
    if "!" in value:
        raise ValueError(f"stylesheet line {line}: !important is not supported")
    value = value.lower()
    if not value:
        raise ValueError(f"stylesheet line {line}: {prop} has no value")
    if prop == "position":
        if value not in ("absolute", "fixed"):
            raise ValueError(
                f"stylesheet line {line}: unsupported position {value[:40]!r} (absolute or fixed)"
            )
        return (prop, value)
    if prop == "object-fit":
        if value not in (FIT_CONTAIN, FIT_COVER):
            raise ValueError(
                f"stylesheet line {line}: unsupported object-fit {value[:40]!r} (contain or cover)"
            )
        return (prop, value)
    if prop == "z-index":
        if value == "auto":
            return (prop, None)
        if not _INTEGER.match(value):
            raise ValueError(f"stylesheet line {line}: z-index must be an integer or auto: {value[:40]!r}")
        return (prop, int(value))
    return (prop, _parse_length(prop, value, line, negative=prop in _OFFSETS))


def parse_stylesheet(text: str) -> Stylesheet:
    """Parse a custom layout's stylesheet; ``ValueError`` (with the line) for anything outside
    the subset described in this module."""
    if not isinstance(text, str):
        raise ValueError("stylesheet: must be a string")
    if len(text) > MAX_STYLESHEET_CHARS:
        raise ValueError(f"stylesheet: longer than {MAX_STYLESHEET_CHARS} characters")
    if "\x00" in text:
        raise ValueError("stylesheet: contains a NUL character")
    source = _strip_comments(text)
    rules: list[Rule] = []
    pos = 0
    while True:
        open_at = source.find("{", pos)
        close_at = source.find("}", pos)
        if open_at < 0:
            rest = source[pos:]
            if rest.strip():
                line = _line_of(source, pos + len(rest) - len(rest.lstrip()))
                if close_at >= 0:
                    raise ValueError(f"stylesheet line {_line_of(source, close_at)}: unexpected `}}`")
                raise ValueError(f"stylesheet line {line}: a selector without a `{{ … }}` block")
            break
        if 0 <= close_at < open_at:
            raise ValueError(f"stylesheet line {_line_of(source, close_at)}: unexpected `}}`")
        prelude = source[pos:open_at]
        line = _line_of(source, open_at)
        if "@" in prelude:
            raise ValueError(f"stylesheet line {line}: at-rules are not supported")
        end = source.find("}", open_at + 1)
        if end < 0:
            raise ValueError(f"stylesheet line {line}: block not closed with `}}`")
        body = source[open_at + 1 : end]
        if "{" in body:
            nested = _line_of(source, open_at + 1 + body.index("{"))
            raise ValueError(f"stylesheet line {nested}: nested block")
        selectors = tuple(_parse_selector(part, line) for part in prelude.split(","))
        declarations: list[tuple[str, str | float | int | None]] = []
        offset = open_at + 1
        for part in body.split(";"):
            declaration = _parse_declaration(part, _line_of(source, offset))
            offset += len(part) + 1
            if declaration is not None:
                declarations.append(declaration)
        rules.append(Rule(selectors=selectors, declarations=tuple(declarations)))
        pos = end + 1
    return Stylesheet(rules=tuple(rules), text=text)


# -- layout specification ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutSpec:
    """An archive's layout: its type, stylesheet (``custom`` only) and screen-share type."""

    type: str = "bestFit"
    stylesheet: Stylesheet | None = None
    screenshare_type: str | None = None


def parse_layout(
    layout_type: object = None, stylesheet: object = None, screenshare_type: object = None
) -> LayoutSpec:
    """A layout from the REST body's ``type``, ``stylesheet`` and ``screenshareType``, checked as
    OpenTok checks them; ``ValueError`` with the reason (a 400 for the API)."""
    kind = "bestFit" if layout_type is None else layout_type
    if not isinstance(kind, str) or kind not in LAYOUT_TYPES:
        raise ValueError(f"layout type must be one of {', '.join(LAYOUT_TYPES)}")
    sheet: Stylesheet | None = None
    if kind == "custom":
        if not isinstance(stylesheet, str):
            raise ValueError("a custom layout needs a stylesheet (a string)")
        sheet = parse_stylesheet(stylesheet)
    elif stylesheet is not None:
        raise ValueError("stylesheet is only allowed with the custom layout type")
    if screenshare_type is not None:
        if not isinstance(screenshare_type, str) or screenshare_type not in SCREENSHARE_TYPES:
            raise ValueError(f"screenshareType must be one of {', '.join(SCREENSHARE_TYPES)}")
        if kind != "bestFit":
            raise ValueError("screenshareType requires the layout type bestFit")
    return LayoutSpec(type=kind, stylesheet=sheet, screenshare_type=screenshare_type)


def parse_resolution(text: object) -> tuple[int, int]:
    """``"1280x720"`` → ``(1280, 720)``; only OpenTok's resolutions, else ``ValueError``."""
    if not isinstance(text, str) or text not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    width, height = text.split("x")
    return int(width), int(height)


# -- computing the tiles -----------------------------------------------------------------------


def _normalise(streams: Iterable[LayoutStream | tuple[str, Sequence[str], str]]) -> list[LayoutStream]:
    out: list[LayoutStream] = []
    seen: set[str] = set()
    for stream in streams:
        item = LayoutStream(stream[0], tuple(stream[1]), stream[2])
        if item.stream_id in seen:
            raise ValueError(f"stream {item.stream_id!r} is listed twice")
        seen.add(item.stream_id)
        out.append(item)
    return out


def _prioritised(streams: list[LayoutStream], limit: int) -> list[LayoutStream]:
    """At most ``limit`` streams, chosen by priority, in their original order."""
    if len(streams) <= limit:
        return streams
    ranked = sorted(
        range(len(streams)),
        key=lambda i: (bool(streams[i].layout_classes), streams[i].video_type == "screen", i),
        reverse=True,
    )
    keep = set(ranked[:limit])
    return [s for i, s in enumerate(streams) if i in keep]


def _edges(total: int, parts: int) -> list[int]:
    return [round(i * total / parts) for i in range(parts + 1)]


def _best_fit(streams: list[LayoutStream], width: int, height: int) -> list[Tile]:
    shown = _prioritised(streams, MAX_STREAMS)
    count = len(shown)
    if count == 0:
        return []
    major = math.ceil(math.sqrt(count))
    minor = math.ceil(count / major)
    cols, rows = (major, minor) if width >= height else (minor, major)
    tiles: list[Tile] = []
    cell_w = width / cols
    row_edges = _edges(height, rows)
    for index, stream in enumerate(shown):
        row, col = divmod(index, cols)
        in_row = min(cols, count - row * cols)
        # An incomplete last row is centred.
        offset = (cols - in_row) * cell_w / 2
        x0 = round(offset + col * cell_w)
        x1 = round(offset + (col + 1) * cell_w)
        y0, y1 = row_edges[row], row_edges[row + 1]
        tiles.append(Tile(stream.stream_id, x0, y0, x1 - x0, y1 - y0, 0, FIT_CONTAIN))
    return tiles


def _focus_index(streams: list[LayoutStream], css_class: str, screen_first: bool) -> int:
    if screen_first:
        for index, stream in enumerate(streams):
            if stream.video_type == "screen":
                return index
    for index, stream in enumerate(streams):
        if css_class in stream.layout_classes:
            return index
    return 0


def _pip(streams: list[LayoutStream], width: int, height: int, screen_first: bool) -> list[Tile]:
    if not streams:
        return []
    full = _focus_index(streams, "full", screen_first)
    tiles = [Tile(streams[full].stream_id, 0, 0, width, height, 0, FIT_CONTAIN)]
    others = [s for i, s in enumerate(streams) if i != full]
    if others:
        corner_w = round(width * _PIP_CORNER)
        corner_h = round(height * _PIP_CORNER)
        margin = round(min(width, height) * 0.03)
        tiles.append(
            Tile(
                others[0].stream_id,
                width - corner_w - margin,
                height - corner_h - margin,
                corner_w,
                corner_h,
                1,
                FIT_CONTAIN,
            )
        )
    return tiles


def _presentation(
    streams: list[LayoutStream], width: int, height: int, *, vertical: bool, screen_first: bool
) -> list[Tile]:
    if not streams:
        return []
    shown = _prioritised(streams, MAX_STREAMS)
    focus = _focus_index(shown, "focus", screen_first)
    others = [s for i, s in enumerate(shown) if i != focus]
    if not others:
        return [Tile(shown[focus].stream_id, 0, 0, width, height, 0, FIT_CONTAIN)]
    tiles: list[Tile] = []
    if vertical:
        column = width - round(width * _PRESENTATION_SHARE)
        tiles.append(Tile(shown[focus].stream_id, column, 0, width - column, height, 0, FIT_CONTAIN))
        edges = _edges(height, len(others))
        for i, stream in enumerate(others):
            tiles.append(Tile(stream.stream_id, 0, edges[i], column, edges[i + 1] - edges[i], 0, FIT_CONTAIN))
    else:
        top = round(height * _PRESENTATION_SHARE)
        tiles.append(Tile(shown[focus].stream_id, 0, 0, width, top, 0, FIT_CONTAIN))
        edges = _edges(width, len(others))
        for i, stream in enumerate(others):
            tiles.append(
                Tile(stream.stream_id, edges[i], top, edges[i + 1] - edges[i], height - top, 0, FIT_CONTAIN)
            )
    return tiles


def _length(value: object, total: int) -> float | None:
    if value is None:
        return None
    assert isinstance(value, str)
    if value.endswith("%"):
        return float(value[:-1]) * total / 100.0
    return float(value[:-2])


def _axis(start: float | None, end: float | None, size: float | None, total: int) -> tuple[float, float]:
    if size is None:
        size = total - start - end if start is not None and end is not None else float(total)
    if start is None:
        start = total - end - size if end is not None else 0.0
    return start, max(size, 0.0)


def _custom(streams: list[LayoutStream], stylesheet: Stylesheet, width: int, height: int) -> list[Tile]:
    placed: list[tuple[int, int, Tile]] = []
    for index, stream in enumerate(_prioritised(streams, MAX_STREAMS)):
        classes = frozenset(stream.layout_classes)
        style: dict[str, tuple[tuple[int, int], int, object]] = {}
        matched = False
        order = 0
        for rule in stylesheet.rules:
            best = None
            for selector in rule.selectors:
                if selector.matches(classes) and (best is None or selector.specificity > best):
                    best = selector.specificity
            if best is None:
                order += len(rule.declarations)
                continue
            matched = True
            for prop, value in rule.declarations:
                current = style.get(prop)
                if current is None or (best, order) >= (current[0], current[1]):
                    style[prop] = (best, order, value)
                order += 1
        if not matched:
            continue
        values = {prop: entry[2] for prop, entry in style.items()}
        left, right, wide = (_length(values.get(p), width) for p in ("left", "right", "width"))
        top, bottom, tall = (_length(values.get(p), height) for p in ("top", "bottom", "height"))
        x, w = _axis(left, right, wide, width)
        y, h = _axis(top, bottom, tall, height)
        # Clip to the output.
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        if x1 <= x0 or y1 <= y0:
            continue
        z = values.get("z-index")
        fit = values.get("object-fit")
        tile = Tile(
            stream.stream_id,
            x0,
            y0,
            x1 - x0,
            y1 - y0,
            z if isinstance(z, int) else 0,
            fit if isinstance(fit, str) else FIT_CONTAIN,
        )
        placed.append((tile.z, index, tile))
    placed.sort(key=lambda item: (item[0], item[1]))
    return [tile for _, _, tile in placed]


def compute_layout(
    layout_type: str | LayoutSpec,
    stylesheet: Stylesheet | str | None,
    resolution: tuple[int, int] | str,
    streams: Iterable[LayoutStream | tuple[str, Sequence[str], str]],
    *,
    screenshare_type: str | None = None,
) -> list[Tile]:
    """The tiles of ``streams`` (``(stream_id, layout_classes, video_type)``, in the order they
    joined) at ``resolution``, in drawing order (lowest ``z`` first). ``layout_type`` may be a
    :class:`LayoutSpec` (its stylesheet and screen-share type then apply)."""
    if isinstance(layout_type, LayoutSpec):
        spec = layout_type
    else:
        sheet = parse_stylesheet(stylesheet) if isinstance(stylesheet, str) else stylesheet
        spec = LayoutSpec(type=layout_type, stylesheet=sheet, screenshare_type=screenshare_type)
    width, height = parse_resolution(resolution) if isinstance(resolution, str) else resolution
    if width <= 0 or height <= 0:
        raise ValueError("resolution must be positive")
    items = _normalise(streams)
    kind = spec.type
    screen_first = False
    if (
        kind == "bestFit"
        and spec.screenshare_type is not None
        and any(s.video_type == "screen" for s in items)
    ):
        kind = spec.screenshare_type
        screen_first = True
    if kind == "bestFit":
        return _best_fit(items, width, height)
    if kind == "pip":
        return _pip(items, width, height, screen_first)
    if kind == "verticalPresentation":
        return _presentation(items, width, height, vertical=True, screen_first=screen_first)
    if kind == "horizontalPresentation":
        return _presentation(items, width, height, vertical=False, screen_first=screen_first)
    if kind == "custom":
        if spec.stylesheet is None:
            raise ValueError("a custom layout needs a stylesheet")
        return _custom(items, spec.stylesheet, width, height)
    raise ValueError(f"layout type must be one of {', '.join(LAYOUT_TYPES)}")
