"""A small bundler for salon's browser ES modules: one file from a graph of modules.

``salon serve`` serves the OpenTok.js-compatible layer two ways from the same source: as ES
modules (``/sdk/opentok.js`` and the modules it imports) and as one file built here at
start-up: the classic script ``/v2/js/opentok.js`` (format ``"iife"``, defining the global
``OT``) and the single ES module ``/v2/js/opentok.mjs`` (format ``"esm"``).

It understands exactly the module syntax salon's browser code uses, and refuses anything
else with a :class:`BundleError` (so a new construct fails at start-up and in the tests, never
silently at a user's page):

* ``import { a, b as c } from "./x.js";``, ``import * as ns from "./x.js";``,
  ``import d from "./x.js";`` and ``import d, { a } from "./x.js";`` with relative paths;
* ``export function|async function|class|const NAME``, ``export { a, b as c };`` and
  ``export default NAME;``.

Each module becomes a function scope evaluated once, in dependency order (cycles are
refused); its imports are bound from the namespaces of the modules it imports. Exports are
not live bindings, which is why ``export let`` is refused.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BundleError", "bundle"]


class BundleError(ValueError):
    """The module graph uses syntax the bundler does not support, or cannot be resolved."""


_IMPORT = re.compile(
    r'^import\s+(?P<clause>[^;"]*?)\s+from\s+"(?P<path>[^"]+)";[ \t]*$', re.MULTILINE | re.DOTALL
)
_SIDE_EFFECT_IMPORT = re.compile(r'^import\s+"(?P<path>[^"]+)";[ \t]*$', re.MULTILINE)
_EXPORT_DECL = re.compile(
    r"^export\s+(?P<kind>async\s+function\*?|function\*?|class|const)\s+(?P<name>[A-Za-z_$][\w$]*)",
    re.MULTILINE,
)
_EXPORT_LIST = re.compile(r"^export\s*\{(?P<names>[^}]*)\};[ \t]*$", re.MULTILINE)
_EXPORT_DEFAULT = re.compile(r"^export\s+default\s+(?P<name>[A-Za-z_$][\w$]*);[ \t]*$", re.MULTILINE)
_IDENT = re.compile(r"^[A-Za-z_$][\w$]*$")
_STRAY = re.compile(r"^(?:import|export)\b.*$", re.MULTILINE)


@dataclass
class _Module:
    path: pathlib.Path
    var: str
    body: str = ""
    deps: list[pathlib.Path] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)  # exported name -> local name


def _names(spec: str, where: str) -> list[tuple[str, str]]:
    """``a, b as c`` -> [("a", "a"), ("b", "c")] (source name, bound name)."""
    pairs = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        words = part.split()
        if len(words) == 1 and _IDENT.match(words[0]):
            pairs.append((words[0], words[0]))
        elif len(words) == 3 and words[1] == "as" and _IDENT.match(words[0]) and _IDENT.match(words[2]):
            pairs.append((words[0], words[2]))
        else:
            raise BundleError(f"{where}: cannot bundle the import/export list item {part!r}")
    return pairs


def _parse(module: _Module, var_for: dict[pathlib.Path, str]) -> None:
    where = str(module.path)
    text = module.path.read_text(encoding="utf-8")

    def target(spec: str) -> pathlib.Path:
        if not spec.startswith(("./", "../")):
            raise BundleError(f"{where}: only relative imports can be bundled, not {spec!r}")
        path = (module.path.parent / spec).resolve()
        if not path.is_file():
            raise BundleError(f"{where}: imports {spec!r}, which does not exist")
        module.deps.append(path)
        return path

    def on_import(match: re.Match[str]) -> str:
        path = target(match["path"])
        var = var_for.setdefault(path, f"__module{len(var_for)}")
        clause = match["clause"].strip()
        lines = []
        default, _, rest = clause.partition(",") if not clause.startswith(("{", "*")) else ("", "", clause)
        default, rest = default.strip(), rest.strip()
        if default:
            if not _IDENT.match(default):
                raise BundleError(f"{where}: cannot bundle the import clause {clause!r}")
            lines.append(f"const {default} = {var}.default;")
        if rest.startswith("*"):
            ns = re.fullmatch(r"\*\s+as\s+([A-Za-z_$][\w$]*)", rest)
            if not ns:
                raise BundleError(f"{where}: cannot bundle the import clause {clause!r}")
            lines.append(f"const {ns[1]} = {var};")
        elif rest.startswith("{") and rest.endswith("}"):
            pairs = _names(rest[1:-1], where)
            bound = ", ".join(a if a == b else f"{a}: {b}" for a, b in pairs)
            lines.append(f"const {{ {bound} }} = {var};")
        elif rest:
            raise BundleError(f"{where}: cannot bundle the import clause {clause!r}")
        # Keep the line count (and so the line numbers of errors) close to the source's.
        return " ".join(lines) + "\n" * match.group(0).count("\n")

    text = _IMPORT.sub(on_import, text)
    text = _SIDE_EFFECT_IMPORT.sub(lambda m: (target(m["path"]), "")[1], text)

    def on_decl(match: re.Match[str]) -> str:
        module.exports[match["name"]] = match["name"]
        return f"{match['kind']} {match['name']}"

    text = _EXPORT_DECL.sub(on_decl, text)

    def on_list(match: re.Match[str]) -> str:
        for local, exported in _names(match["names"], where):
            module.exports[exported] = local
        return ""

    text = _EXPORT_LIST.sub(on_list, text)

    def on_default(match: re.Match[str]) -> str:
        module.exports["default"] = match["name"]
        return ""

    text = _EXPORT_DEFAULT.sub(on_default, text)
    stray = _STRAY.search(text)
    if stray:
        line_no = text.count("\n", 0, stray.start()) + 1
        raise BundleError(f"{where}:{line_no}: cannot bundle {stray.group(0).strip()!r}")
    module.body = text


def bundle(entry: pathlib.Path, fmt: Literal["iife", "esm"], *, root: pathlib.Path | None = None) -> str:
    """The module graph of ``entry`` as one script (``"iife"``) or one ES module (``"esm"``).

    In the ES module form, the entry's exports are the file's exports. ``root`` only shortens
    the paths named in the generated comments.
    """
    entry = entry.resolve()
    var_for: dict[pathlib.Path, str] = {entry: "__module0"}
    modules: dict[pathlib.Path, _Module] = {}
    order: list[_Module] = []
    visiting: list[pathlib.Path] = []

    def visit(path: pathlib.Path) -> None:
        if path in modules:
            return
        if path in visiting:
            cycle = " -> ".join(p.name for p in [*visiting[visiting.index(path) :], path])
            raise BundleError(f"import cycle: {cycle}")
        visiting.append(path)
        module = _Module(path, var_for.setdefault(path, f"__module{len(var_for)}"))
        _parse(module, var_for)
        for dep in module.deps:
            visit(dep)
        visiting.pop()
        modules[path] = module
        order.append(module)

    visit(entry)
    base = root.resolve() if root else entry.parent
    parts = []
    for module in order:
        if fmt == "iife" and "import.meta" in module.body:
            raise BundleError(f"{module.path}: import.meta cannot be used in a classic script")
        try:
            name = module.path.relative_to(base).as_posix()
        except ValueError:
            name = module.path.name
        exported = ", ".join(f"{e}: {local}" if e != local else e for e, local in module.exports.items())
        parts.append(
            f"// ---- {name}\nconst {module.var} = (() => {{\n{module.body.rstrip()}\n"
            f"return Object.freeze({{ {exported} }});\n}})();\n"
        )
    body = "\n".join(parts)
    header = f"// Bundled by salon from {entry.name} and the modules it imports: do not edit.\n"
    if fmt == "iife":
        return f'{header}(function () {{\n"use strict";\n{body}}})();\n'
    entry_module = modules[entry]
    names = [e for e in entry_module.exports if e != "default"]
    tail = ""
    if names:
        tail += "export const { " + ", ".join(names) + f" }} = {entry_module.var};\n"
    if "default" in entry_module.exports:
        tail += f"export default {entry_module.var}.default;\n"
    return f"{header}{body}{tail}"
