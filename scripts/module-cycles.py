#!/usr/bin/env python3
"""Lists import cycles between the top-level modules of each crate of the workspace.

A module `a` depends on `b` when a file of `a` names `crate::b` (in a `use` or a path),
or, inside a folder module, `super::b`. Test modules (`#[cfg(test)]` to the end of the
file, and `tests.rs`) are left out: tests may reach anywhere. Exits 1 when a cycle is
found. Used as `python3 scripts/module-cycles.py` (see ARCHITECTURE.md).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def top_module(src: pathlib.Path, f: pathlib.Path) -> str:
    rel = f.relative_to(src).parts
    if len(rel) == 1:
        return rel[0][:-3]  # a.rs, lib.rs, main.rs
    return rel[0]  # a/mod.rs, a/b.rs


def production_text(f: pathlib.Path) -> str:
    text = f.read_text()
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def edges(src: pathlib.Path) -> dict:
    deps = {}
    for f in src.rglob("*.rs"):
        if f.name == "tests.rs":
            continue
        m = top_module(src, f)
        if m in ("lib", "main"):
            continue
        text = re.sub(r"//.*", "", production_text(f))
        names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
        names |= {n for grp in re.findall(r"\bcrate::\{([^}]*)\}", text) for n in re.findall(r"\b([a-z_][a-z0-9_]*)\b", grp)}
        deps.setdefault(m, set()).update(n for n in names if n != m)
    modules = set(deps)
    return {m: {d for d in ds if d in modules} for m, ds in deps.items()}


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    srcs = sorted(p / "src" for p in (ROOT / "crates").iterdir() if (p / "src").is_dir())
    srcs.append(ROOT / "src")
    found = False
    for src in srcs:
        crate = src.parent.name if src.parent != ROOT else "stagehand (cli)"
        for comp in cycles(edges(src)):
            found = True
            print(f"{crate}: {' <-> '.join(comp)}")
    if not found:
        print(f"no import cycles between modules ({len(srcs)} crates)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
