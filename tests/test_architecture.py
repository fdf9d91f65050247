"""The shape of the code, checked: imports run one way, kinds are plug-ins, no cycles.

The import graph is read with ``ast`` (so nothing is imported to check it): module-level and
in-function imports, relative imports and ``importlib.import_module("...")`` / ``__import__``
strings all count, because a cycle hidden inside a function is still a cycle a maintainer has to
reason about. Rules (docs/architecture.md):

1. no cycle anywhere in ``datalab``, ``assets``, ``checks``, ``pipelines``;
2. ``datalab`` never imports the Dagster layer (``assets``, ``checks``, ``pipelines``) nor ``dagster``;
3. a kind (``datalab/cad``, ``datalab/timeseries`` and its Dagster half ``assets/<kind>.py``) is
   imported by nothing outside it but the registry ``datalab/kinds``;
4. wings import down only: settings and contracts (``config``, ``errors``, ``contracts``) import no
   wing; no wing imports a face (``cli``, ``service``, ``client``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datalab", "assets", "checks", "pipelines")
DAGSTER_LAYER = ("assets", "checks", "pipelines")
REGISTRY = "datalab.kinds"
BASE = ("datalab.config", "datalab.errors", "datalab.contracts")
# what settings and contracts may import besides each other: the version, and the registry's table of
# contract sections (through which each kind parses its own part of a contract)
BASE_MAY_IMPORT = (*BASE, "datalab.version", "datalab.kinds.sections")
FACES = ("datalab.cli", "datalab.service", "datalab.client")


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def kinds(mods: dict[str, Path]) -> dict[str, str]:
    """Kind name -> its package, found on disk: every package under ``datalab`` with a ``kind`` module."""
    return {m.split(".")[1]: m.rsplit(".", 1)[0] for m in mods if m.count(".") == 2 and m.endswith(".kind")}


def kind_of(module: str, kind_pkgs: dict[str, str]) -> str | None:
    for name, pkg in kind_pkgs.items():
        if _under(module, (pkg, f"assets.{name}")):
            return name
    return None


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every module of the repo that ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_pkg else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            names = [s for s in subs if s in mods]
            if len(names) < len(subs):  # a name that is not a submodule: the package itself
                names.append(base)
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                names = [node.args[0].value.split(":")[0]]
        for n in names:
            if n.split(".")[0] == "dagster":
                found.add("dagster")
            r = _resolve(n, mods)
            if r and r != module:
                found.add(r)
    return found


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in g:
        if start in index:
            continue
        work = [(start, iter(sorted(g.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in g:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
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
                        out.append(sorted(comp))
    return out


def violations(g: dict[str, set[str]], kind_pkgs: dict[str, str]) -> list[str]:
    """Every broken rule, one line each (rules 2-4; cycles are reported by :func:`cycles`)."""
    bad: list[str] = []
    for m, targets in sorted(g.items()):
        for t in sorted(targets):
            if m.startswith("datalab") and (t == "dagster" or t.split(".")[0] in DAGSTER_LAYER):
                bad.append(f"{m} -> {t}: the core never imports the Dagster layer")
            k = kind_of(t, kind_pkgs)
            if k and kind_of(m, kind_pkgs) != k and not _under(m, (REGISTRY,)):
                bad.append(f"{m} -> {t}: only the registry ({REGISTRY}) imports the kind {k!r}")
            if _under(m, BASE) and t.startswith("datalab") and not _under(t, BASE_MAY_IMPORT) and t != "datalab":
                bad.append(f"{m} -> {t}: settings and contracts import no wing")
            if m.startswith("datalab") and not _under(m, FACES) and _under(t, FACES):
                bad.append(f"{m} -> {t}: a wing never imports a face (cli, service, client)")
    return bad


# -- the checker can fail -----------------------------------------------------


def test_checker_finds_a_cycle_and_each_broken_rule(tmp_path: Path) -> None:
    """A small tree with one of each mistake: the checker names every one."""
    files = {
        "datalab/__init__.py": "",
        "datalab/config.py": "from datalab.intake import landing\n",
        "datalab/intake/__init__.py": "",
        "datalab/intake/landing.py": "def f():\n    from datalab.cad import check\n",
        "datalab/kinds/__init__.py": "import importlib\nK = lambda: importlib.import_module('datalab.cad.kind')\n",
        "datalab/cad/__init__.py": "",
        "datalab/cad/kind.py": "from datalab.cad import check\n",
        "datalab/cad/check.py": "from ..intake.landing import f\nimport dagster\n",
        "datalab/cli/__init__.py": "",
        "datalab/store/__init__.py": "",
        "datalab/store/publish.py": "from datalab.cli import x\n",
        "assets/__init__.py": "",
        "checks/__init__.py": "",
        "pipelines/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    mods = modules(tmp_path)
    g = graph(mods)
    assert cycles(g) == [["datalab.cad.check", "datalab.intake.landing"]]
    bad = "\n".join(violations(g, kinds(mods)))
    assert "datalab.intake.landing -> datalab.cad.check: only the registry" in bad
    assert "datalab.cad.check -> dagster" in bad
    assert "datalab.config -> datalab.intake.landing: settings and contracts import no wing" in bad
    assert "datalab.store.publish -> datalab.cli: a wing never imports a face" in bad
    assert not any(line.startswith("datalab.kinds ") for line in bad)  # the registry may import kinds


# -- the tree ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Path], dict[str, set[str]]]:
    mods = modules()
    return mods, graph(mods)


def test_no_import_cycles(tree) -> None:
    _, g = tree
    assert cycles(g) == []


def test_imports_run_one_way_and_kinds_are_plug_ins(tree) -> None:
    mods, g = tree
    assert set(kinds(mods)) >= {"cad", "timeseries"}
    assert violations(g, kinds(mods)) == []
