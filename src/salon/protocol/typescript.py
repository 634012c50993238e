"""Generate the browser SDK's TypeScript declarations of the protocol from its Pydantic models.

``src/salon/web/sdk/protocol.d.ts`` is generated from the JSON Schema of
:data:`~salon.protocol.ClientMessage` and :data:`~salon.protocol.ServerMessage` and checked in;
the SDK's JSDoc imports its types, so ``tsc`` checks the SDK against the schema, and a unit
test fails when the file no longer matches the models. Regenerate it with::

    python -m salon.protocol.typescript          # write the file
    python -m salon.protocol.typescript --check  # exit 1 if it is out of date

Client-to-server messages are declared as the server accepts them (a field with a default is
optional); server-to-client messages as the server sends them (every field, ``null`` where
there is no value).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from salon.protocol.codes import CloseCode, DisconnectReason, ErrorCode, StreamReason, VideoReason
from salon.protocol.messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    ServerMessage,
    VideoType,
)

__all__ = ["DEFAULT_PATH", "REGENERATE", "main", "render"]

#: Where the declarations are checked in: the browser SDK's directory of this source tree.
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "web" / "sdk" / "protocol.d.ts"
#: The command that regenerates :data:`DEFAULT_PATH`.
REGENERATE = "python -m salon.protocol.typescript"

_ENUMS: tuple[type, ...] = (ErrorCode, CloseCode, DisconnectReason, StreamReason, VideoReason, VideoType)

Schema = dict[str, Any]


def _comment(text: str | None, indent: str = "") -> list[str]:
    if not text:
        return []
    text = re.sub(r"``([^`]+)``", r"`\1`", text.strip()).replace("*/", "*\\/")
    text = re.sub(r"\bNone\b", "null", text)  # the JSON spelling of Python's None
    lines = [line.rstrip() for line in text.splitlines()]
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


def _type(schema: Schema) -> str:
    """The TypeScript type of one JSON Schema (as Pydantic writes them)."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        item = _type(schema.get("items", {}))
        return f"({item})[]" if " | " in item else f"{item}[]"
    if kind == "object" and "properties" not in schema:
        return "Record<string, unknown>"
    raise ValueError(f"no TypeScript type for the JSON Schema {schema!r}")


def _interface(name: str, schema: Schema, direction: Literal["client", "server"]) -> list[str]:
    required = set(schema.get("required", ()))
    lines = [*_comment(schema.get("description")), f"export interface {name} {{"]
    for field, prop in schema["properties"].items():
        # The server sends every field; the server accepts a client message without the fields
        # that have a default, but always needs the discriminator.
        optional = direction == "client" and field not in required and field != "type"
        lines += _comment(prop.get("description"), "  ")
        lines.append(f"  {field}{'?' if optional else ''}: {_type(prop)};")
    lines.append("}")
    return lines


def _alias(name: str, members: Sequence[str], doc: str | None = None) -> list[str]:
    """``export type name = a | b;``, one member a line when that is too long for one."""
    line = f"export type {name} = {' | '.join(members)};"
    if len(line) > 100:
        rows = [f"  | {m}" for m in members]
        return [*_comment(doc), f"export type {name} =", *rows[:-1], f"{rows[-1]};"]
    return [*_comment(doc), line]


def _section(title: str) -> list[str]:
    return ["", f"// --- {title} " + "-" * (92 - len(title))]


def _enum(cls: type) -> list[str]:
    schema = TypeAdapter(cls).json_schema()
    return _alias(cls.__name__, [json.dumps(v) for v in schema["enum"]], schema.get("description"))


def render() -> str:
    """The text of ``protocol.d.ts`` for the current models."""
    schemas: list[tuple[Literal["client", "server"], Schema]] = [
        ("client", TypeAdapter(ClientMessage).json_schema(mode="validation")),
        ("server", TypeAdapter(ServerMessage).json_schema(mode="serialization")),
    ]
    direction_of: dict[str, Literal["client", "server"]] = {}
    defs: dict[str, Schema] = {}
    unions: dict[str, list[str]] = {}
    for direction, schema in schemas:
        unions[direction] = [_type(member) for member in schema["oneOf"]]
        for name, definition in schema["$defs"].items():
            if name in defs and defs[name] != definition:
                raise ValueError(f"{name} differs between the two directions")
            defs[name] = definition
            direction_of.setdefault(name, direction)
    enum_names = {cls.__name__ for cls in _ENUMS}
    unknown_enums = {n for n, d in defs.items() if "enum" in d} - enum_names
    if unknown_enums:
        raise ValueError(f"add {sorted(unknown_enums)} to _ENUMS")
    members = set(unions["client"]) | set(unions["server"])
    objects = sorted(n for n in defs if n not in members and n not in enum_names)

    out = [
        f"// Generated by `{REGENERATE}` from the Pydantic models of salon.protocol: do not edit.",
        "// The salon signalling protocol's messages (docs/protocol.md), for the browser SDK's JSDoc.",
        "",
        "/** The protocol version these declarations describe (`connect`'s `protocol_version`). */",
        f"export type ProtocolVersion = {PROTOCOL_VERSION};",
    ]
    for cls in _ENUMS:
        out += ["", *_enum(cls)]
    out += _section("objects inside server messages")
    for name in objects:
        out += ["", *_interface(name, defs[name], direction_of[name])]
    for direction, title in (("client", "client -> server"), ("server", "server -> client")):
        out += _section(title)
        for name in unions[direction]:
            out += ["", *_interface(name, defs[name], direction_of[name])]
    replies = [n for n in unions["server"] if "request_id" in defs[n]["properties"]]
    events = [n for n in unions["server"] if n not in replies]
    requests = [n for n in unions["client"] if "request_id" in defs[n]["properties"]]
    out += _section("unions")
    for name, doc, names in (
        ("ClientMessage", "Every message a client sends (discriminated on `type`).", unions["client"]),
        ("ClientRequest", "The client messages that carry a `request_id` and get one reply.", requests),
        ("ServerMessage", "Every message the server sends (discriminated on `type`).", unions["server"]),
        ("ServerReply", "The server messages that answer a request (`error` also comes alone).", replies),
        ("ServerEvent", "The server messages that answer no request.", events),
    ):
        out += ["", *_alias(name, names, doc)]
    out += [
        "",
        "/** A client request without its `request_id`, which the SDK adds when it sends it. */",
        "export type ClientRequestBody = ClientRequest extends infer M",
        '  ? M extends { request_id: unknown } ? Omit<M, "request_id"> : never',
        "  : never;",
        "",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=REGENERATE, description="Generate the browser SDK's protocol.d.ts from salon.protocol."
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    path: Path = args.output
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            print(f"{path} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
