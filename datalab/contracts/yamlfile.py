"""Reading the lab's YAML files (contracts, datasets, the purpose vocabulary): syntax errors become problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> tuple[Any, list[str]]:
    """Parse YAML; a syntax error becomes a problem with its line and column."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [f"byte {e.start}: the file is not UTF-8 ({e.reason})"]
    except OSError as e:
        return None, [f"cannot read the file: {e.strerror}"]
    try:
        # libyaml's loader where PyYAML has it: much faster on a wide contract
        # (measured in docs/performance.md), same documents (both build with
        # SafeConstructor).
        return yaml.load(text, Loader=_YAML_LOADER), []  # a safe loader (SafeConstructor)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, [f"{where}invalid YAML: {getattr(e, 'problem', None) or e}"]

