"""The push check of a CAD delivery: sniff by content, parse in the sandbox, apply the contract.

Called by ``datalab.intake.landing`` through the CAD kind (``datalab/cad/kind.py``: ``check_staged``), on the staged
files of one delivery. Every file is parsed (in parallel, each in its own
sandboxed process); its facts are cached content-addressed per tenant
(``raw/<tenant>/cad-parsed/<sha[:2]>/<sha>.json`` and ``.png``), so the
ingest and curation stages never parse the same bytes again. A file is
rejected, with a reason that names it and the rule, when its bytes are no
CAD format or not one the contract allows, when the parser fails, hangs,
crashes or exceeds a limit, when it holds no geometry, or when it breaks a
contract rule (assemblies, closed outlines).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datalab.cad import sandbox
from datalab.cad.settings import CadSettings
from datalab.config import Settings, safe_segment
from datalab.contracts.contract import Contract
from datalab.store.storage import store


def cache_dir(contract: Contract, s: Settings) -> Path:
    return s.raw / safe_segment(contract.tenant, "tenant") / "cad-parsed"


def cache_paths(contract: Contract, sha: str, s: Settings) -> tuple[Path, Path]:
    d = cache_dir(contract, s) / safe_segment(sha[:2], "sha256")
    return d / f"{safe_segment(sha, 'sha256')}.json", d / f"{sha}.png"


def cached(contract: Contract, sha: str, s: Settings) -> dict[str, Any] | None:
    """A file's parse facts, if the cache (in the lab's store) has them."""
    path, _ = cache_paths(contract, sha, s)
    st = store(s)
    try:
        return json.loads(st.read_text(st.key(path)))
    except (OSError, ValueError):
        return None


def _store(contract: Contract, sha: str, parsed: dict[str, Any], s: Settings) -> None:
    """Cache a file's parse facts and its thumbnail (written by the sandbox beside them) in the lab's store."""
    path, png = cache_paths(contract, sha, s)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(parsed, default=str))
    tmp.replace(path)
    st = store(s)
    st.save(path)
    if png.exists():
        st.save(png)


def parse_files(contract: Contract, files: list[tuple[str, Path, str]], s: Settings) -> dict[str, sandbox.Outcome]:
    """Parse (name, path, sha) files not yet in the cache; outcome by sha (cache hits are ok outcomes).

    The paths are files on this machine (staged, or fetched from the lab's store).
    """
    cad = contract.section
    out: dict[str, sandbox.Outcome] = {}
    jobs = []
    for name, path, sha in files:
        hit = cached(contract, sha, s)
        if hit is not None:
            out[sha] = sandbox.Outcome(sha, name, True, hit, kind="cached")
        elif sha not in {j.key for j in jobs}:
            jobs.append(sandbox.Job(sha, Path(path), name, cache_paths(contract, sha, s)[1]))
    if jobs:
        for o in sandbox.run(jobs, workers=cad.workers, timeout_s=cad.parse_timeout_s, memory_bytes=cad.parse_memory_bytes):
            if o.ok and o.result is not None:
                _store(contract, o.key, o.result, s)
            out[o.key] = o
    return out


def contract_reasons(cad: CadSettings, name: str, parsed: dict[str, Any]) -> list[str]:
    """The contract rules a parsed file breaks (each a reason naming the file and the rule)."""
    fmt = parsed["format"]
    out = []
    if fmt not in cad.formats:
        out.append(f"{name}: the content is {fmt.upper()}, which is not among the contract's formats "
                   f"{list(cad.formats)} (rule: cad.formats)")
    if fmt == "stl" and parsed["stl"]["triangles"] == 0:
        out.append(f"{name}: {parsed['detail']} STL with 0 triangles: the file holds no geometry "
                   "(rule: no empty files)")
    if fmt == "stl" and parsed["stl"]["nonfinite"]:
        out.append(f"{name}: {parsed['stl']['nonfinite']} triangles with NaN or infinite coordinates (rule: finite geometry)")
    if fmt == "dxf" and parsed["dxf"]["entities"] == 0:
        out.append(f"{name}: DXF drawing without entities in model space (rule: no empty files)")
    if fmt == "step" and parsed["step"]["is_assembly"] and not cad.assemblies:
        out.append(f"{name}: STEP assembly ({parsed['step']['assembly_links']} NEXT_ASSEMBLY_USAGE_OCCURRENCE) "
                   "but the contract allows single parts only (rule: cad.assemblies)")
    if fmt == "dxf" and cad.require_closed_outlines and parsed["dxf"]["open_outlines"]:
        d = parsed["dxf"]
        ends = ", ".join(f"({x:g}, {y:g})" for x, y in d["open_endpoints"])
        out.append(f"{name}: open_outline: {d['open_outlines']} outline(s) whose ends do not meet; dangling "
                   f"endpoints at {ends} (drawing units) (rule: cad.require_closed_outlines)")
    return out


def check_staged(contract: Contract, staged: list[tuple[str, Path, str, int, bool]], s: Settings) -> list[Any]:
    """FileReceipts for the staged (name, path, sha, size, over_limit) files of one delivery."""
    from datalab.intake.receipts import FileReceipt

    todo = [(name, path, sha) for name, path, sha, _size, over in staged if not over]
    outcomes = parse_files(contract, todo, s) if todo else {}
    receipts = []
    for name, _path, sha, size, over in staged:
        fr = FileReceipt(name=name, sha256=sha, bytes=size, rows=None, format=None, compression=None)
        if over:
            fr.reasons.append(f"{name}: {size:,} bytes exceeds the contract's limit of {contract.max_file_bytes:,} bytes "
                              "(rule: limits.max_file_bytes); the bytes were not stored")
        else:
            o = outcomes[sha]
            if not o.ok or o.result is None:
                fr.reasons.append(o.reason or f"{name}: not parsed")
            else:
                p = o.result
                fr.format = p["format"] if p["format"] != "stl" else f"stl-{p['detail']}"
                fr.reasons += contract_reasons(contract.section, name, p)
                fr.rows = 0 if fr.reasons else 1
        receipts.append(fr)
    return receipts
