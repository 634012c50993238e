"""Custom layout stylesheets: the CSS subset OpenTok documents for archive layouts.

A stylesheet is a list of rules whose selector is ``stream``, a class (``.focus``), both
(``stream.focus``), or a comma-separated list of those; each declaration is ``position``
(``absolute``/``relative``), ``top``, ``left``, ``right``, ``bottom``, ``width``, ``height``
(a number in ``%`` or ``px``, or 0), ``z-index`` (an integer) or ``object-fit``
(``contain``/``cover``/``fill``). Anything else is refused. The composer
(``salon.archive.composer``) draws from the parsed rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Rule", "parse_stylesheet"]

#: The longest stylesheet accepted, characters.
MAX_STYLESHEET = 16 * 1024

_SELECTOR = re.compile(r"^(stream(\.[A-Za-z_][A-Za-z0-9_-]*)*|(\.[A-Za-z_][A-Za-z0-9_-]*)+)$")
_LENGTH = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)(%|px)?$")
_LENGTH_PROPERTIES = frozenset({"top", "left", "right", "bottom", "width", "height"})
_KEYWORDS = {
    "position": frozenset({"absolute", "relative"}),
    "object-fit": frozenset({"contain", "cover", "fill"}),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its selectors (``stream`` or ``.class``) and declarations, in order."""

    selectors: tuple[str, ...]
    declarations: tuple[tuple[str, str], ...]


def _declaration(text: str) -> tuple[str, str]:
    if ":" not in text:
        raise ValueError(f"a declaration must be `property: value`, not {text!r}")
    name, value = (part.strip().lower() for part in text.split(":", 1))
    if name in _LENGTH_PROPERTIES:
        match = _LENGTH.match(value)
        if match is None or (match.group(3) is None and float(value) != 0):
            raise ValueError(f"{name} must be a length in % or px, not {value!r}")
    elif name == "z-index":
        if not re.fullmatch(r"-?\d{1,6}", value):
            raise ValueError(f"z-index must be an integer, not {value!r}")
    elif name in _KEYWORDS:
        if value not in _KEYWORDS[name]:
            raise ValueError(f"{name} must be one of {', '.join(sorted(_KEYWORDS[name]))}, not {value!r}")
    else:
        raise ValueError(f"the property {name!r} is not supported in a layout stylesheet")
    return name, value


def parse_stylesheet(text: str) -> list[Rule]:
    """Parse a custom layout stylesheet.

    :raises ValueError: with a message saying what is wrong, for anything outside the subset.
    """
    if len(text) > MAX_STYLESHEET:
        raise ValueError(f"a stylesheet is at most {MAX_STYLESHEET} characters")
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    rules: list[Rule] = []
    rest = text.strip()
    while rest:
        if "{" not in rest:
            raise ValueError(f"expected `selector {{ declarations }}` at {rest[:40]!r}")
        head, rest = rest.split("{", 1)
        if "}" not in rest:
            raise ValueError("a rule is not closed with `}`")
        body, rest = rest.split("}", 1)
        rest = rest.strip()
        if "{" in body:
            raise ValueError("nested rules are not supported in a layout stylesheet")
        selectors = tuple(s.strip() for s in head.split(","))
        for selector in selectors:
            if not _SELECTOR.match(selector):
                raise ValueError(
                    f"the selector {selector!r} is not supported: use stream, .class or stream.class"
                )
        declarations = tuple(_declaration(d) for d in body.split(";") if d.strip())
        rules.append(Rule(selectors, declarations))
    if not rules:
        raise ValueError("the stylesheet has no rules")
    return rules
