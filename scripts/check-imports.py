#!/usr/bin/env python3
"""Fails, naming the pair, when two modules of a crate import each other.

STYLE.md's rule: two modules never import each other; move the shared type down, or the factory
up. This reads the `use crate::…` and `use super::…` statements of every crate's src/ (and
`crate::a::b` paths written out in code, which import as much), follows
`mod x;` declarations from each crate root (lib.rs, main.rs, bin/*.rs) so that `crate::` means
what rustc says it means, and reports every pair A -> B, B -> A. Text only, no cargo: it runs
in well under a second, so `make lint` and `make test` can afford it.

Usage: scripts/check-imports.py [REPO_ROOT]
"""

import os
import re
import sys
from pathlib import Path

# Circles known today, each to be split; (crate dir, module, module), modules as `a::b` paths
# from the crate root ("crate" for the root itself). Remove a line once its circle is gone: a
# stale entry fails the check too, so this list cannot rot.
ALLOWED = set()  # none today

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)
USE_START = re.compile(r"^([ \t]*)(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|super)::)", re.M)
QUALIFIED = re.compile(r"\bcrate::((?:[A-Za-z_][A-Za-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)*)")


def strip_comments(text):
    # Newlines stay, so line numbers in the report stay true.
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def module_files(root_file):
    """{module path: file} for the crate rooted at root_file, following `mod x;`."""
    modules = {}
    pending = [((), root_file, True)]
    while pending:
        path, file, owns_dir = pending.pop()
        modules[path] = file
        # lib.rs, main.rs, bin/x.rs and mod.rs declare children beside them; a.rs in a/.
        base = file.parent if owns_dir else file.parent / file.stem
        for name in MOD_DECL.findall(strip_comments(file.read_text())):
            for child, child_owns_dir in ((base / f"{name}.rs", False), (base / name / "mod.rs", True)):
                if child.is_file():
                    pending.append((path + (name,), child, child_owns_dir))
                    break
    return modules


def expand(tree):
    """`a::{b, c::{d, self}}` -> [[a, b], [a, c, d], [a, c]]."""
    tree = tree.strip()
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{" and depth == 0:
            head = [s for s in tree[:i].split("::") if s]
            inner = tree[i + 1 : tree.rindex("}")]
            parts, depth2, start = [], 0, 0
            for j, c in enumerate(inner):
                if c == "{":
                    depth2 += 1
                elif c == "}":
                    depth2 -= 1
                elif c == "," and depth2 == 0:
                    parts.append(inner[start:j])
                    start = j + 1
            parts.append(inner[start:])
            return [head + rest for part in parts if part.strip() for rest in expand(part)]
    segments = [s.strip() for s in tree.split("::") if s.strip()]
    segments = [s.split(" as ")[0].strip() for s in segments]
    return [[s for s in segments if s != "self"]]


def imports(module, file, modules):
    """(target module, line number) for each crate::/super:: import in file."""
    text = strip_comments(file.read_text())
    found = []
    for m in USE_START.finditer(text):
        indent, prefix = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        body = text[m.end() : text.index(";", m.end())]
        # Indented `use super::` sits in an inline module (tests): its parent is this file.
        if prefix == "crate::":
            base = ()
        else:
            base = module if indent else module[:-1]
        for path in expand(body):
            if prefix == "super::":
                here = list(base)
                while path and path[0] == "super":
                    here, path = here[:-1], path[1:]
                path = here + path
            # The longest leading part that names a module; items name their module.
            target = ()
            for n in range(len(path), 0, -1):
                if tuple(path[:n]) in modules:
                    target = tuple(path[:n])
                    break
            if target != module:
                found.append((target, line))
    # A path written out in code (`crate::run::Timing::new()`) imports as much as a `use` does.
    for m in QUALIFIED.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if USE_START.match(text, text.rfind("\n", 0, m.start()) + 1):
            continue
        path = m.group(1).split("::")
        target = ()
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in modules:
                target = tuple(path[:n])
                break
        if target != module:
            found.append((target, line))
    return found


def name(module):
    return "::".join(module) or "crate"


def check_crate(crate_dir):
    src = crate_dir / "src"
    roots = [src / "lib.rs", src / "main.rs"] + sorted((src / "bin").glob("*.rs"))
    circles = []
    for root in roots:
        if not root.is_file():
            continue
        modules = module_files(root)
        edges = {}
        for module, file in modules.items():
            for target, line in imports(module, file, modules):
                edges.setdefault((module, target), f"{file}:{line}")
        for (a, b), where in sorted(edges.items()):
            if a < b and (b, a) in edges:
                circles.append((frozenset((name(a), name(b))), f"{name(a)} <-> {name(b)} ({where}, {edges[(b, a)]})"))
    return circles


def main():
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    os.chdir(repo)
    repo = Path(".")
    failed = False
    seen = set()
    allowed = {(crate, frozenset((a, b))) for crate, a, b in ALLOWED}
    for manifest in sorted(repo.glob("*/Cargo.toml")):
        crate_dir = manifest.parent
        for pair, text in check_crate(crate_dir.relative_to(repo)):
            key = (crate_dir.name, pair)
            if key in seen:
                continue
            seen.add(key)
            if (crate_dir.name, pair) in allowed:
                continue
            print(f"check-imports: {crate_dir.name}: modules import each other: {text}")
            failed = True
        for crate, a, b in ALLOWED:
            if crate == crate_dir.name and (crate, frozenset((a, b))) not in seen:
                print(f"check-imports: {crate}: {a} <-> {b} is allowed but no longer a circle; drop it from ALLOWED")
                failed = True
    if failed:
        print("check-imports: move the shared item down into its own module, or the factory up (STYLE.md: rooms)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
