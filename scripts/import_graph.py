"""Print the facts of the core's layout that docs/architecture.md quotes: modules per folder, import
cycles, broken layering rules (the checks of tests/test_architecture.py, which builds the same graph)
and functions over 80 lines.

    .venv/bin/python scripts/import_graph.py
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import test_architecture as arch  # noqa: E402  (the test's own graph, so the numbers are the test's)


def main() -> None:
    mods = arch.modules()
    g = arch.graph(mods)
    core = {m: p for m, p in mods.items() if m == "datalab" or m.startswith("datalab.")}
    lines = sum(len(p.read_text().splitlines()) for p in core.values())
    per = collections.Counter(str(p.parent.relative_to(ROOT)) for p in core.values())
    print(f"modules in datalab/: {len(core)} ({lines:,} lines)")
    for folder, n in sorted(per.items()):
        print(f"  {folder:<28} {n}")
    print(f"import cycles: {len(arch.cycles(g))}")
    for c in arch.cycles(g):
        print("  " + " -> ".join(c))
    bad = arch.violations(g, arch.kinds(mods))
    print(f"layering violations: {len(bad)}")
    for v in bad:
        print("  " + v)
    long = []
    for m, p in mods.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80:
                long.append((n.end_lineno - n.lineno + 1, f"{m}.{n.name}"))
    print(f"functions over 80 lines: {len(long)}")
    for n, name in sorted(long, reverse=True):
        print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main()
