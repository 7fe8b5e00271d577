#!/usr/bin/env python3
"""Lists the dependencies between sift-lab's top-level modules (src/<module>.rs or
src/<module>/) from their `crate::` paths and `use super::` climbs, and reports every cycle.
Exits 1 when there is one. Usage: python3 scripts/module_cycles.py [SRC_DIR] [--graph] (from the repository root)"""
import re
import sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "src")
modules = sorted(
    p.stem if p.is_file() else p.name
    for p in src.iterdir()
    if (p.suffix == ".rs" and p.stem not in ("lib", "main")) or (p.is_dir())
)
deps = {m: set() for m in modules}
for m in modules:
    files = [src / f"{m}.rs"] if (src / f"{m}.rs").exists() else list((src / m).rglob("*.rs"))
    for f in files:
        text = f.read_text()
        # Drop line comments and unit-test modules: only the library's own uses count.
        text = re.sub(r"//[^\n]*", "", text)
        text = text.split("#[cfg(test)]")[0]
        for used in re.findall(r"crate::(\w+)", text):
            if used in deps and used != m:
                deps[m].add(used)
        for group in re.findall(r"use crate::\{([^;]*)\};", text, flags=re.S):
            for used in re.findall(r"(?:^|[\s,{])(\w+)(?=::|\s*[,}]|$)", group):
                if used in deps and used != m:
                    deps[m].add(used)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in deps[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(comp)
for v in modules:
    if v not in index:
        visit(v)
# Inside each folder module: its files, linked by `super::x` and `crate::<folder>::x`.
for folder in [m for m in modules if (src / m).is_dir()]:
    files = {f.stem: f for f in (src / folder).glob("*.rs") if f.stem != "mod"}
    for name, f in files.items():
        text = re.sub(r"//[^\n]*", "", f.read_text()).split("#[cfg(test)]")[0]
        used = set(re.findall(r"super::(\w+)", text)) | set(re.findall(rf"crate::{folder}::(\w+)", text))
        for group in re.findall(r"use super::\{([^;]*)\};", text, flags=re.S):
            used |= set(re.findall(r"(?:^|[\s,{])(\w+)(?=::)", group))
        node = f"{folder}/{name}"
        deps[node] = {f"{folder}/{u}" for u in used if u in files and u != name}
        modules.append(node)
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
for v in modules:
    if v not in index:
        visit(v)
cycles = [sorted(c) for c in sccs if len(c) > 1]
if "--graph" in sys.argv:
    for m in modules:
        print(f"{m:<24} -> {', '.join(sorted(deps[m])) or '-'}")
for c in cycles:
    print("cycle:", " <-> ".join(c))
print(f"{len(modules)} modules and files, {sum(len(d) for d in deps.values())} dependencies, {len(cycles)} cycles")
sys.exit(1 if cycles else 0)
