"""The purpose vocabulary (``data_contracts/purposes.yaml``).

Contracts, dataset specs and pull requests must use the same words, or a
policy check silently compares different things ("ml-training" never matches
"model-training"). So every purpose is looked up here, and an unknown word is
an error that names the word and the vocabulary's version. The hierarchy is
ODRL ``isPartOf``: a child purpose is part of its parent, so allowing the
parent allows the child and prohibiting the parent prohibits the child.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from datalab.contracts.yamlfile import read_yaml
from datalab.errors import ContractError, PolicyRefused

FILE = "purposes.yaml"


@dataclass(frozen=True)
class Vocabulary:
    """The known purposes, their parents and the vocabulary's version."""

    version: str
    parents: dict[str, str | None]
    descriptions: dict[str, str]
    path: Path

    def __contains__(self, purpose: object) -> bool:
        return purpose in self.parents

    def lineage(self, purpose: str) -> list[str]:
        """``purpose`` and every purpose it is part of, nearest first."""
        self.require(purpose)
        out, p = [], purpose
        while p is not None:
            out.append(p)
            p = self.parents[p]
        return out

    def is_part_of(self, child: str, parent: str) -> bool:
        """True if ``child`` is ``parent`` or (transitively) part of it."""
        return parent in self.lineage(child)

    def unknown(self, purposes: list[str]) -> list[str]:
        return [p for p in purposes if p not in self.parents]

    def require(self, purpose: str, where: str = "purpose") -> None:
        """Raise if ``purpose`` is not in the vocabulary (names word and version)."""
        if purpose not in self.parents:
            raise PolicyRefused(
                "purposes",
                f"{where} {purpose!r} is not in the purpose vocabulary v{self.version} "
                f"({self.path.name}); known: {', '.join(sorted(self.parents))}",
            )

    def problems(self, purposes: list[object], where: str) -> list[str]:
        """Lint messages for the words of a list (used by contract and spec lint)."""
        return [
            f"{where}[{i}]: unknown purpose {p!r} (purpose vocabulary v{self.version}, {self.path.name})"
            for i, p in enumerate(purposes)
            if isinstance(p, str) and p not in self.parents
        ]


def parse(path: Path) -> Vocabulary:
    """Read and check a vocabulary file; every problem is reported at once."""
    doc, problems = read_yaml(path)
    if not problems and not isinstance(doc, dict):
        problems = ["(document): must be a mapping with version and purposes"]
    parents: dict[str, str | None] = {}
    descriptions: dict[str, str] = {}
    version = ""
    if not problems:
        version = str(doc.get("version") or "")
        if not version:
            problems.append("version: required (semantic version of the vocabulary)")
        entries = doc.get("purposes")
        if not isinstance(entries, list) or not entries:
            problems.append("purposes: a non-empty list of {name, isPartOf, description}")
            entries = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                problems.append(f"purposes[{i}]: needs a name")
                continue
            name = e["name"]
            if name in parents:
                problems.append(f"purposes[{i}]: {name!r} is listed twice")
            parent = e.get("isPartOf")
            expected = name.rpartition(".")[0] or None
            if parent != expected:
                problems.append(f"purposes[{i}].isPartOf: {name!r} must be part of {expected!r} (its dotted prefix), not {parent!r}")
            parents[name] = parent
            descriptions[name] = str(e.get("description") or "")
        for name, parent in parents.items():
            if parent is not None and parent not in parents:
                problems.append(f"purposes: {name!r} is part of {parent!r}, which is not defined")
    if problems:
        raise ContractError(str(path), problems)
    return Vocabulary(version, parents, descriptions, path)


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int) -> Vocabulary:
    return parse(Path(path))


def load(contracts_dir: Path | None = None) -> Vocabulary:
    """The vocabulary of a contracts directory (default: the lab's settings)."""
    if contracts_dir is None:
        from datalab.config import settings

        contracts_dir = settings().contracts_dir
    path = Path(contracts_dir) / FILE
    if not path.exists():
        raise ContractError(str(path), ["the purpose vocabulary is missing"])
    return _cached(str(path), path.stat().st_mtime_ns)


def require_all(purposes: list[str], where: str, contracts_dir: Path | None = None) -> Vocabulary:
    """Check a list of purposes; raises naming the first unknown word."""
    v = load(contracts_dir)
    for p in purposes:
        v.require(p, where)
    return v
