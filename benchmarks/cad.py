"""CAD deliveries: push (sniff + sandboxed parse) -> curated, validated table, for a mixed batch.

    .venv/bin/python benchmarks/cad.py --files 300 --per-delivery 50

Generates ``--files`` CAD files from the real ones in ``../shared/realdata/cad``
by transformation, so that every file has distinct bytes and geometry:

* STEP: every CARTESIAN_POINT translated by a random offset (a valid, moved
  B-rep), the FILE_NAME and PRODUCT names changed;
* STL: triangles rotated, scaled and translated; a third written as ASCII;
* DXF: every entity translated with ezdxf and saved.

(Run it with ``if __name__ == "__main__"`` intact: the sandbox's fork server
imports the main module.)

Then, in one lab (``DATALAB_HOME`` in a temp dir): push in deliveries of
``--per-delivery`` files (each file parsed in its own sandboxed process,
``--workers`` at a time), ingest (from the push's cache), curate and validate
each delivery (GX suite, no Data Docs). Side by side, the obvious
alternative: the same parse in-process, file after file, without sandbox,
limits or any of the lab's bookkeeping (thumbnails rendered too). Prints
files/s, MB/s and peak RSS (the lab's process, and the largest sandbox child
as the child measured it), and the load average, since CAD parsing is CPU
bound and a shared machine slows it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(os.environ.get("DATALAB_REALDATA", ROOT.parent / "shared" / "realdata")) / "cad"
TOOLING = "urn:datalab:lyon-presses:tooling-cad"
GOOD_STEP = ["featuretype.STEP", "nist_ctc_01_asme1_rd.stp", "nist_ftc_11_asme1_rb.stp"]
GOOD_STL = ["featuretype.STL", "busted.STL"]
GOOD_DXF = ["1002_tray_bottom.DXF", "wrench.dxf"]
_POINT = re.compile(r"(CARTESIAN_POINT\s*\(\s*'[^']*'\s*,\s*\()([^)]*)(\))")


def rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def make_step(src: Path, dst: Path, rng: random.Random, i: int) -> None:
    text = src.read_text(encoding="latin-1")
    off = [rng.uniform(-50, 50) for _ in range(3)]

    def move(m: re.Match[str]) -> str:
        vals = [float(v) for v in m.group(2).split(",")]
        return m.group(1) + ", ".join(repr(v + off[k]) for k, v in enumerate(vals)) + m.group(3)

    text = _POINT.sub(move, text)
    text = re.sub(r"PRODUCT\s*\(\s*'([^']*)'", lambda m: f"PRODUCT('{m.group(1)}_v{i}'", text)
    dst.write_text(text, encoding="latin-1")


def make_stl(src: Path, dst: Path, rng: random.Random, ascii_: bool) -> None:
    from datalab.cad import stl

    _st, tris, _n = stl.read_binary(src.read_bytes())
    q, _ = np.linalg.qr(np.array([[rng.gauss(0, 1) for _ in range(3)] for _ in range(3)]))
    t = (tris.reshape(-1, 3) @ q.T * rng.uniform(0.5, 2.0) + np.array([rng.uniform(-10, 10) for _ in range(3)]))
    t = t.reshape(-1, 3, 3).astype(np.float32)
    if ascii_:
        lines = ["solid bench"]
        for tri in t:
            lines += ["facet normal 0 0 0", "outer loop", *[f"vertex {x:.7g} {y:.7g} {z:.7g}" for x, y, z in tri],
                      "endloop", "endfacet"]
        dst.write_text("\n".join([*lines, "endsolid bench", ""]))
    else:
        rec = np.zeros(len(t), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
        rec["v"] = t
        dst.write_bytes(b"benchmark".ljust(80, b" ") + np.uint32(len(t)).tobytes() + rec.tobytes())


def make_dxf(src: Path, dst: Path, rng: random.Random) -> None:
    import ezdxf

    doc = ezdxf.readfile(str(src))
    dx, dy = rng.uniform(-100, 100), rng.uniform(-100, 100)
    for e in doc.modelspace():
        with contextlib.suppress(AttributeError, NotImplementedError):
            e.translate(dx, dy, 0)
    doc.saveas(str(dst))


def generate(n: int, out: Path, seed: int) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        kind = ("step", "stl", "dxf")[i % 3]
        if kind == "step":
            src = REAL / "step" / GOOD_STEP[i % len(GOOD_STEP)]
            dst = out / f"part{i:04d}{src.suffix}"
            make_step(src, dst, rng, i)
        elif kind == "stl":
            src = REAL / "stl" / GOOD_STL[i % len(GOOD_STL)]
            dst = out / f"mesh{i:04d}.stl"
            make_stl(src, dst, rng, ascii_=i % 9 == 1)
        else:
            src = REAL / "dxf" / GOOD_DXF[i % len(GOOD_DXF)]
            dst = out / f"profile{i:04d}.dxf"
            make_dxf(src, dst, rng)
        paths.append(dst)
    return paths


def run_lab(files: list[Path], per: int, workers: int) -> dict:
    from datalab.cad import curate
    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.quality import validate

    s = settings()
    c = contract.load_all(s.contracts_dir)[TOOLING]
    if workers:
        object.__setattr__(c.cad, "workers", workers)
    stages = {"push": 0.0, "ingest": 0.0, "curate": 0.0, "validate": 0.0}
    accepted = rejected = 0
    reasons: list[str] = []
    for k in range(0, len(files), per):
        batch = files[k:k + per]
        t = time.perf_counter()
        rec = landing.push(c, batch, actor="bench")
        stages["push"] += time.perf_counter() - t
        if not rec.accepted:
            rejected += 1
            reasons += rec.reasons
            continue
        accepted += 1
        t = time.perf_counter()
        curate.ingest(c, rec.delivery_id, s)
        stages["ingest"] += time.perf_counter() - t
        t = time.perf_counter()
        curate.curate_delivery(c, rec.delivery_id, s)
        stages["curate"] += time.perf_counter() - t
        t = time.perf_counter()
        rep = validate.validate(c, curate.curated_path(c, rec.delivery_id, s), run_name=rec.delivery_id, build_docs=False)
        stages["validate"] += time.perf_counter() - t
        if not rep.success:
            reasons.append(rep.summary())
    from datalab.cad import check

    parsed = [json.loads(p.read_text()) for p in check.cache_dir(c, s).rglob("*.json")]
    return {"stages": stages, "accepted_deliveries": accepted, "rejected_deliveries": rejected, "reasons": reasons[:5],
            "child_rss_mb": max((p.get("sandbox_peak_rss_mb") or 0.0) for p in parsed),
            "parse_seconds_sum": sum(p.get("parse_seconds") or 0.0 for p in parsed)}


def run_inprocess(files: list[Path], thumbs: Path) -> dict:
    from datalab.cad import worker

    worker.warm()
    t = time.perf_counter()
    for i, p in enumerate(files):
        worker.parse(p, p.name, thumbs / f"{i}.png")
    return {"seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--per-delivery", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0, help="sandbox processes at once (0: CPU count)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--mode", choices=["all", "lab", "inprocess"], default="all")
    ap.add_argument("--dir", type=Path, default=None, help="reuse generated files here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = args.dir or Path(tmp) / "files"
        gen.mkdir(parents=True, exist_ok=True)
        files = sorted(gen.iterdir()) if args.dir and any(gen.iterdir()) else None
        if files is None:
            t = time.perf_counter()
            files = generate(args.files, gen, args.seed)
            print(f"generated {len(files)} files ({sum(p.stat().st_size for p in files) / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        mb = sum(p.stat().st_size for p in files) / 1e6
        if args.mode == "all":
            import subprocess

            res = {}
            for mode in ("lab", "inprocess"):
                env = {**os.environ, "DATALAB_HOME": str(Path(tmp) / f"lab-{mode}"), "DATALAB_ENGINE": "cpu"}
                cmd = [sys.executable, __file__, "--mode", mode, "--dir", str(gen), "--workers", str(args.workers),
                       "--per-delivery", str(args.per_delivery)]
                outp = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                res[mode] = json.loads(outp.stdout.strip().splitlines()[-1])
            lab, inp = res["lab"], res["inprocess"]
            print(f"\n{len(files)} files, {mb:.1f} MB (STEP/STL/DXF mix), workers={args.workers or os.cpu_count()}\n")
            print(f"{'':34} {'seconds':>8} {'files/s':>8} {'MB/s':>7} {'peak RSS MB':>12} {'child RSS MB':>13}")
            total = sum(lab["stages"].values())
            for k, v in lab["stages"].items():
                print(f"  datalab {k:25} {v:8.1f} {len(files) / v:8.1f} {mb / v:7.2f}")
            print(f"{'datalab push -> validated':34} {total:8.1f} {len(files) / total:8.1f} {mb / total:7.2f} "
                  f"{lab['rss_mb']:12.0f} {lab['child_rss_mb']:13.0f}")
            print(f"{'  (sum of in-sandbox parse time)':34} {lab['parse_seconds_sum']:8.1f}")
            print(f"{'in-process parse+thumbnail, no sandbox':34} {inp['seconds']:8.1f} {len(files) / inp['seconds']:8.1f} "
                  f"{mb / inp['seconds']:7.2f} {inp['rss_mb']:12.0f} {'-':>13}")
            print(f"load average (1 min) after each run: lab {lab['loadavg'][0]:.1f}, in-process {inp['loadavg'][0]:.1f}")
            print(json.dumps({"files": len(files), "mb": mb, **res}))
            return
        if args.mode == "lab":
            r = run_lab(files, args.per_delivery, args.workers)
        else:
            r = run_inprocess(files, Path(tmp))
        r["rss_mb"] = rss_mb()
        r.setdefault("child_rss_mb", 0.0)
        r["loadavg"] = os.getloadavg()
        print(json.dumps(r))


if __name__ == "__main__":
    main()
