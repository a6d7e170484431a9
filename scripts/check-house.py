#!/usr/bin/env python3
"""Checks the shape of the crate (run by scripts/test.sh; exits 1 on a violation):

- no source file under src/ longer than MAX_LINES lines;
- no import cycle between source files: a file's edges are the crate paths it names (`use`
  trees and inline `crate::`, `super::`, `self::` paths) resolved to the file of the module they
  name; a parent module re-exporting its own children (`pub use child::X` in mod.rs) is the
  facade pattern and not counted;
(`unsafe` outside src/sys* is refused by the compiler, `#![deny(unsafe_code)]`, and the unit
test sys::tests::unsafe_only_in_sys; the direction between top-level modules by
layering::imports_flow_down.)

Usage: scripts/check-house.py [SRC_DIR]   (default: src next to this script's parent)
"""
import os
import re
import sys

MAX_LINES = 800

USE_STMT = re.compile(r"\b(pub(\([^)]*\))?\s+)?use\s+([^;]+);", re.S)
INLINE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip_comments_and_strings(text):
    """Source text without comments, string and char literals (kept as blanks)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            i += len(re.match(r"'(\\.|[^\\'])'", text[i:]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


INLINE_MOD = re.compile(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{")


def inline_mods(code):
    """(start, end, name) of each inline `mod name { ... }` block of stripped code."""
    out = []
    for m in INLINE_MOD.finditer(code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += code[i] == "{"
            depth -= code[i] == "}"
            i += 1
        out.append((m.start(), i, m.group(1)))
    return out


def scope_at(pos, mod, blocks):
    """The module a position of a file is in, inline `mod` blocks included."""
    inner = [name for start, end, name in blocks if start <= pos < end]
    return mod + tuple(inner)


def module_of(path, src):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (aliases and globs dropped)."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [re.sub(r"(::\*|as[A-Za-z_0-9]+)$", "", tree.split(" as ")[0])]
    head, rest = tree.split("{", 1)
    body = rest[: rest.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in filter(None, parts):
        for sub in expand_use_tree(p):
            out.append(head + sub if sub != "self" else head.rstrip(":"))
    return out


def resolve(path, here, modules):
    """The module (tuple) a crate path names, seen from module `here`, or None."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("self", "super"):
        base = here
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    # An inline module (tests) is part of its file: resolve from the nearest file module.
    while base and base not in modules:
        base = base[:-1]
    best = base if base in modules else None
    for k in range(1, len(segs) + 1):
        if base + tuple(segs[:k]) in modules:
            best = base + tuple(segs[:k])
    return best


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    src = os.path.normpath(src)
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                p = os.path.join(root, name)
                files[module_of(p, src)] = p
    problems = []
    edges = {m: set() for m in files}
    for mod, path in sorted(files.items()):
        text = open(path, encoding="utf-8").read()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines > MAX_LINES:
            problems.append(f"{path}: {lines} lines (at most {MAX_LINES})")
        code = strip_comments_and_strings(text)
        blocks = inline_mods(code)
        named = []
        for m in USE_STMT.finditer(code):
            is_pub = bool(m.group(1))
            for p in expand_use_tree(m.group(3)):
                named.append((p, is_pub, scope_at(m.start(), mod, blocks)))
        # Paths outside `use` statements (those were taken above, with their `pub`).
        bare = USE_STMT.sub(lambda m: " " * len(m.group(0)), code)
        for m in INLINE.finditer(bare):
            named.append((m.group(1), False, scope_at(m.start(), mod, blocks)))
        for p, is_pub, here in named:
            target = resolve(p, here, files)
            if target is None or target == mod:
                continue
            # A parent re-exporting its descendants is its facade, not a dependency.
            if is_pub and target[: len(mod)] == mod:
                continue
            edges[mod].add(target)
    # Strongly connected components (Tarjan, iterative) of more than one file are cycles.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    sccs.append(sorted(comp))
    for comp in sccs:
        names = [os.path.relpath(files[m], src) for m in comp]
        problems.append("import cycle between: " + ", ".join(names))
    for p in problems:
        print(p)
    print(f"check-house: {len(files)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
