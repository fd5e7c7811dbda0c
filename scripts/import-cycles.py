#!/usr/bin/env python3
"""Lists import cycles between the modules of each crate of the workspace.

A module is a source file; module A imports B when A names `crate::b…` or
`super::…` resolving to B (in a `use` or a path). Cycles are the strongly
connected components with more than one module. Run: scripts/import-cycles.py
(exit status 1 when it finds any; it prints every cycle).
"""
import os
import re
import sys

CRATES = ["protocol", "crdt", "actors", "hub", "clients/rust", "loadtest"]
PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "main"):
                rel = rel[:-1]
            elif rel[-1] == "mod":
                rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(root, f)
    return mods


def resolve(mods, path):
    """The longest module prefix of `path`."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return ()


def edges_of(mods, mod, text, is_mod_rs):
    # Strip comments so doc links do not count.
    text = re.sub(r"//[^\n]*", "", text)
    base = list(mod) if is_mod_rs else list(mod[:-1])
    targets = set()

    def add(kind, segs):
        if kind == "crate":
            path = segs
        else:
            path = base[:]
            while segs and segs[0] == "super":
                segs = segs[1:]
                path = path[:-1]
            path = path + segs
        target = resolve(mods, path)
        if target != mod and target != ():
            targets.add(target)

    for m in USE_GROUP_RE.finditer(text):
        prefix = [s for s in m.group(2).split("::") if s]
        for item in re.split(r",", m.group(3)):
            head = item.strip().split("::")[0].split(" ")[0].strip("{} ")
            if head and head != "self":
                add(m.group(1), prefix + [head])
            elif head == "self":
                add(m.group(1), prefix)
    for m in PATH_RE.finditer(text):
        segs = [s for s in m.group(2).split("::") if s]
        add(m.group(1), segs)
    return targets


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    total = 0
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        graph = {}
        for mod, path in mods.items():
            with open(path, encoding="utf-8") as f:
                text = f.read()
            graph[mod] = edges_of(mods, mod, text, path.endswith("mod.rs") or path.endswith("lib.rs") or path.endswith("main.rs"))
        for comp in sccs(graph):
            if len(comp) > 1:
                total += 1
                names = sorted("::".join(m) or "(root)" for m in comp)
                print(f"{crate}: " + " <-> ".join(names))
    print(f"{total} import cycle(s)")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
