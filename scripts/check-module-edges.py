#!/usr/bin/env python3
"""Fails when a crate's top-level modules reference each other against the allowed edges.

For every crate directory holding a `module-edges.txt` (the crate's `src/` beside it),
the file lists the allowed references between the top-level modules of `src/`:

    # comment
    receivers -> mapping      # receivers may name crate::mapping
    app -> *                  # the root/wiring module may name every module

Each `src/<module>.rs` and `src/<module>/**/*.rs` is scanned for references to another
top-level module: `crate::<other>` in paths and `use` statements (multi-line
`use crate::{a, b::c}` groups included) and `super::…` chains that climb to the crate
root. Comments and string literals are ignored. `lib.rs`, `main.rs` and `src/bin/`
are crate roots, not modules, and are not checked.

Test code is exempt: items under `#[cfg(test)]` (an inline `mod tests { … }`, a
`#[cfg(test)] mod x;` file, a single test-only item). The edges describe what ships;
a unit test may build its input with any module of its crate, and it is compiled into
no binary. The allowed edges themselves must form a DAG (`*` edges aside).

Usage: scripts/check-module-edges.py [crate_dir ...]  (default: every crate of the
workspace that has a module-edges.txt). Exit status 1 lists each edge not allowed.
"""

import os
import re
import sys

EDGE_FILE = "module-edges.txt"
ROOTS = {"lib.rs", "main.rs"}


def strip_comments_and_strings(text):
    """Blanks comments, string and char literals (newlines kept, so lines still count)."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif re.match(r'b?r#*"', text[i:i + 8]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(b?r)(#*)"', text[i:])
            end = '"' + m.group(2)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(blank(text[i:j]))
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(blank(text[i:j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), else a lifetime or label.
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:])
            if m:
                out.append(blank(m.group(0)))
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


CFG_TEST = re.compile(r"#\[cfg\(\s*test\s*\)\]")
TEST_MOD_FILE = re.compile(r"#\[cfg\(\s*test\s*\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")


def blank_test_code(text):
    """Blanks every item under #[cfg(test)]; returns (text, names of test-only `mod x;` files)."""
    test_files = set(TEST_MOD_FILE.findall(text))
    chars = list(text)
    for m in CFG_TEST.finditer(text):
        j = m.end()
        brace, semi = text.find("{", j), text.find(";", j)
        if brace < 0 and semi < 0:
            continue
        if brace < 0 or (0 <= semi < brace):
            end = semi
        else:
            end = matching_brace(text, brace)
        for k in range(m.start(), end + 1):
            if chars[k] != "\n":
                chars[k] = " "
    return "".join(chars), test_files


CRATE_REF = re.compile(r"(?<![\w$])crate\s*::\s*(\{|\w+)")
SUPER_REF = re.compile(r"(?<![\w$:])((?:super\s*::\s*)+)(\{|\w+)")


def group_heads(text, open_at):
    """`{a, b::c, d::{e}}` → ['a', 'b', 'd'] (the first segment of each element)."""
    close = matching_brace(text, open_at)
    body, heads, depth, start = text[open_at + 1:close], [], 0, 0
    parts = []
    for k, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:k])
            start = k + 1
    parts.append(body[start:])
    for p in parts:
        m = re.match(r"\s*(\w+)", p)
        if m:
            heads.append(m.group(1))
    return heads


def references(text, depth):
    """(line, name) for every reference to a crate-root name; `depth` is the file's module depth."""
    refs = []

    def line_of(pos):
        return text.count("\n", 0, pos) + 1

    def add(m, head_group):
        head = m.group(head_group)
        if head == "{":
            for h in group_heads(text, m.start(head_group)):
                refs.append((line_of(m.start()), h))
        else:
            refs.append((line_of(m.start()), head))

    for m in CRATE_REF.finditer(text):
        add(m, 1)
    for m in SUPER_REF.finditer(text):
        if m.group(1).count("super") >= depth:
            add(m, 2)
    return refs


def read_edges(path):
    edges, errors = set(), []
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"(\w+)\s*->\s*(\w+|\*)", line)
            if not m:
                errors.append(f"{path}:{number}: expected `from -> to`, got {raw.strip()!r}")
                continue
            edges.add((m.group(1), m.group(2)))
    return edges, errors


def modules_of(src):
    mods = {}
    for entry in sorted(os.listdir(src)):
        full = os.path.join(src, entry)
        if entry.endswith(".rs") and entry not in ROOTS:
            mods.setdefault(entry[:-3], []).append(full)
        elif os.path.isdir(full) and entry != "bin":
            mods.setdefault(entry, []).append(full)
    return mods


def files_of(paths):
    for p in paths:
        if os.path.isfile(p):
            yield p
        else:
            for dirpath, _, names in os.walk(p):
                for name in sorted(names):
                    if name.endswith(".rs"):
                        yield os.path.join(dirpath, name)


def module_depth(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    depth = len(rel)
    if rel[-1] == "mod.rs":
        depth -= 1
    return depth


def find_cycle(edges, modules):
    graph = {m: sorted(t for f, t in edges if f == m and t != "*") for m in modules}
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if not state.get(t):
                cycle = visit(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if not state.get(m):
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def check_crate(crate_dir):
    src = os.path.join(crate_dir, "src")
    edges, problems = read_edges(os.path.join(crate_dir, EDGE_FILE))
    modules = modules_of(src)
    for f, t in sorted(edges):
        for name in (f, t):
            if name != "*" and name not in modules:
                problems.append(f"{crate_dir}/{EDGE_FILE}: {f} -> {t}: no module `{name}` in {src}")
    cycle = find_cycle(edges, modules)
    if cycle:
        problems.append(f"{crate_dir}/{EDGE_FILE}: the allowed edges have a cycle: {' -> '.join(cycle)}")

    found = {}
    for module, paths in modules.items():
        test_files = set()
        for path in files_of(paths):
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem in test_files:
                continue
            with open(path, encoding="utf-8") as f:
                text = strip_comments_and_strings(f.read())
            text, tests_here = blank_test_code(text)
            test_files |= tests_here
            for line, target in references(text, module_depth(src, path)):
                if target == module or target not in modules:
                    continue
                if (module, target) in edges or (module, "*") in edges:
                    continue
                found.setdefault((module, target), set()).add(f"{os.path.relpath(path, crate_dir)}:{line}")
    for (f, t), where in sorted(found.items()):
        problems.append(f"{crate_dir}: {f} -> {t} is not an allowed edge ({', '.join(sorted(where))})")
    return problems


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crates = argv or [
        os.path.join(root, d)
        for d in sorted(os.listdir(root))
        if os.path.isfile(os.path.join(root, d, EDGE_FILE))
    ]
    problems = []
    for crate in crates:
        if not os.path.isfile(os.path.join(crate, EDGE_FILE)):
            continue
        problems += check_crate(os.path.relpath(crate))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"module edges: {len(problems)} problem(s); allowed edges are listed in */{EDGE_FILE}", file=sys.stderr)
        return 1
    print(f"module edges: ok ({', '.join(os.path.relpath(c, root) for c in crates) or 'no crate has ' + EDGE_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
