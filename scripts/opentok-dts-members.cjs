#!/usr/bin/env node
// Everything OpenTok.js's TypeScript definitions declare, as JSON, for the conformance test
// (tests/e2e/browser/test_ot_conformance.py): the members of OT, Session, Publisher, Subscriber,
// Stream and Connection (with the `.promise` variants as "name.promise"), and the events of each
// emitter with the fields of their event objects. Parsed with the TypeScript compiler API.
//
//   node scripts/opentok-dts-members.cjs [path/to/opentok.d.ts]
"use strict";
const fs = require("fs");
const path = require("path");
const ts = require("typescript");

const file = process.argv[2] || path.join(__dirname, "..", "node_modules", "@opentok", "client", "dist", "js", "opentok.d.ts");
const source = ts.createSourceFile(file, fs.readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);

const namespace = source.statements.find((s) => ts.isModuleDeclaration(s) && s.name.text === "OT");
if (!namespace || !namespace.body || !ts.isModuleBlock(namespace.body)) throw new Error(`no namespace OT in ${file}`);
const statements = namespace.body.statements;
const exported = (node) => (ts.getModifiers(node) || []).some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
const nameOf = (node) => (node.name && (ts.isIdentifier(node.name) || ts.isStringLiteral(node.name)) ? node.name.text : null);

/** @type {Map<string, ts.TypeAliasDeclaration>} */
const aliases = new Map();
/** @type {Map<string, ts.ClassDeclaration>} */
const classes = new Map();
for (const s of statements) {
  if (ts.isTypeAliasDeclaration(s)) aliases.set(s.name.text, s);
  if (ts.isClassDeclaration(s) && s.name) classes.set(s.name.text, s);
}

/** The fields an event type adds to the base Event (type, cancelable, target, …). */
function fields(node) {
  if (!node) return [];
  if (ts.isParenthesizedTypeNode(node)) return fields(node.type);
  if (ts.isIntersectionTypeNode(node) || ts.isUnionTypeNode(node)) return [...new Set(node.types.flatMap(fields))];
  if (ts.isTypeLiteralNode(node)) return node.members.map(nameOf).filter(Boolean);
  if (ts.isTypeReferenceNode(node)) {
    const name = node.typeName.getText(source);
    if (name === "Event") return [];
    const alias = aliases.get(name);
    if (alias) return fields(alias.type);
  }
  return [];
}

/** Members of a class, with "name.promise" for OpenTok's callable-with-promise members. */
function members(cls) {
  const out = [];
  for (const m of cls.members) {
    const name = nameOf(m);
    if (!name || ts.isConstructorDeclaration(m)) continue;
    if (!out.includes(name)) out.push(name);
    if (ts.isPropertyDeclaration(m) && m.type && ts.isTypeLiteralNode(m.type)) {
      for (const inner of m.type.members) {
        const innerName = nameOf(inner);
        if (innerName && !out.includes(`${name}.${innerName}`)) out.push(`${name}.${innerName}`);
      }
    }
  }
  return out;
}

/** The event map of a class extending OTEventEmitter<{…}> (and the emitter's on/once/off). */
function events(cls) {
  const heritage = (cls.heritageClauses || []).flatMap((h) => h.types);
  const base = heritage.find((t) => /EventEmitter$/.test(t.expression.getText(source)));
  if (!base) return { members: [], events: {} };
  const emitter = classes.get(base.expression.getText(source));
  const map = base.typeArguments && base.typeArguments[0];
  const out = {};
  if (map && ts.isTypeLiteralNode(map)) {
    for (const m of map.members) out[nameOf(m)] = fields(m.type);
  }
  return { members: emitter ? members(emitter) : [], events: out };
}

const result = { OT: [], events: {}, eventBase: [] };
for (const s of statements) {
  if (!exported(s)) continue;
  if (ts.isFunctionDeclaration(s) && s.name) {
    if (!result.OT.includes(s.name.text)) result.OT.push(s.name.text);
  } else if (ts.isModuleDeclaration(s) && s.body && ts.isModuleBlock(s.body)) {
    for (const inner of s.body.statements) {
      if (ts.isVariableStatement(inner)) {
        for (const d of inner.declarationList.declarations) result.OT.push(`${s.name.text}.${d.name.getText(source)}`);
      }
    }
  } else if (ts.isClassDeclaration(s) && s.name) {
    const name = s.name.text;
    result.OT.push(name);
    const { members: inherited, events: map } = events(s);
    result[name] = [...members(s), ...inherited.filter((m) => !members(s).includes(m))];
    if (Object.keys(map).length) result.events[name] = map;
  }
}
// OT's own events: on/once/off("exception", (event: ExceptionEvent) => …).
result.events.OT = { exception: fields(aliases.get("ExceptionEvent").type) };
// The members every event object has.
const eventAlias = aliases.get("Event");
result.eventBase = eventAlias.type.members.map(nameOf);
process.stdout.write(JSON.stringify(result, null, 1) + "\n");
