"""CAD readers, dispatch by content, the sandbox, and fuzzing of the pure-Python parsers."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datalab.cad import dxf, sandbox, sniff, step_header, stl
from datalab.cad.settings import lint as lint_cad

CAD = Path(os.environ.get("DATALAB_REALDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "realdata")) / "cad"
needs_real = pytest.mark.skipif(not CAD.is_dir(), reason=f"real CAD files not found at {CAD}")


# ---------------------------------------------------------------- dispatch by content


@needs_real
@pytest.mark.parametrize(("rel", "fmt", "detail"), [
    ("step/featuretype.STEP", "step", "step"), ("step/nist_ftc_11_asme1_rb.stp", "step", "step"),
    ("stl/featuretype.STL", "stl", "binary"), ("stl/busted.STL", "stl", "binary"),
    ("stl/stl_empty_bin.stl", "stl", "binary"), ("dxf/1002_tray_bottom.DXF", "dxf", "dxf"),
    ("dxf/broken_loop.dxf", "dxf", "dxf"), ("dxf/wrench.dxf", "dxf", "dxf"),
])
def test_sniff_real_files(rel: str, fmt: str, detail: str) -> None:
    sn = sniff.sniff(CAD / rel)
    assert (sn.format, sn.detail) == (fmt, detail)


@needs_real
def test_sniff_rejects_by_content_not_extension(tmp_path: Path) -> None:
    z = tmp_path / "part.stp"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(CAD / "step/nist_ftc_11_asme1_rb.stp", "inner.stp")
    with pytest.raises(sniff.NotCad, match=r"part.stp: the content is a ZIP archive"):
        sniff.sniff(z)
    g = tmp_path / "mesh.stl"
    g.write_text("solid but then just words and no facets at all\nlorem ipsum\n")
    with pytest.raises(sniff.NotCad, match=r"mesh.stl: starts like an ASCII STL"):
        sniff.sniff(g)
    t = tmp_path / "cut.stl"
    t.write_bytes((CAD / "stl/featuretype.STL").read_bytes()[:5000])
    with pytest.raises(sniff.NotCad, match=r"declaring 3,476 triangles .* truncated or padded"):
        sniff.sniff(t)
    # a STEP file named .stl is a STEP file
    s = tmp_path / "really_step.stl"
    s.write_bytes((CAD / "step/nist_ftc_11_asme1_rb.stp").read_bytes())
    assert sniff.sniff(s).format == "step"
    e = tmp_path / "empty.dxf"
    e.write_bytes(b"")
    with pytest.raises(sniff.NotCad, match="empty"):
        sniff.sniff(e)


def test_ascii_stl_with_two_solids() -> None:
    tri = "facet normal 0 0 1\nouter loop\nvertex {} 0 0\nvertex 1 {} 0\nvertex 0 0 {}\nendloop\nendfacet\n"
    # a closed tetrahedron per solid, two solids
    def tet(name: str, d: float) -> str:
        pts = [(d, d, d), (d + 1, d, d), (d, d + 1, d), (d, d, d + 1)]
        faces = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
        body = "".join("facet normal 0 0 0\nouter loop\n" + "".join(f"vertex {pts[i][0]} {pts[i][1]} {pts[i][2]}\n" for i in f)
                       + "endloop\nendfacet\n" for f in faces)
        return f"solid {name}\n{body}endsolid {name}\n"
    assert tri  # the template above documents the layout
    data = (tet("a", 0.0) + tet("b", 5.0)).encode()
    assert sniff.sniff_bytes(data[:65536], len(data)).detail == "ascii"
    s, _tris = stl.read(data, binary=False)
    assert s.solids == 2 and s.solid_names == ["a", "b"] and s.triangles == 8
    assert s.closed and s.volume == pytest.approx(2 / 6)
    assert s.zero_normals == 8


# ---------------------------------------------------------------- readers on real files


@needs_real
def test_step_header_real() -> None:
    h = step_header.parse((CAD / "step/featuretype.STEP").read_bytes())
    assert (h.ap, h.originating_system, h.preprocessor, h.timestamp) == ("AP214", "SolidWorks 2013", "SwSTEP 2.0", "2014-10-03T02:30:11")
    assert (h.length_unit, h.length_unit_mm, h.products, h.is_assembly) == ("inch", 25.4, ["featuretype"], False)
    h = step_header.parse((CAD / "step/nist_ctc_01_asme1_rd.stp").read_bytes())
    assert h.ap == "AP203" and h.length_unit == "mm" and h.entity_count == 5325
    assert h.entity_types["ADVANCED_FACE"] == 139


def test_step_header_encoding_escapes_and_assembly() -> None:
    text = (
        "ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('Pi\\X2\\00E8\\X0\\ce ; d''essai'),'2;1');\n"
        "FILE_NAME('bride.stp','2024-01-02T03:04:05',('J. M\xfcller'),('Presses de Lyon'),'pp','CATIA V5',$);\n"
        "FILE_SCHEMA(('AP242_MANAGED_MODEL_BASED_3D_ENGINEERING_MIM_LF { 1 0 10303 442 1 1 4 }'));\nENDSEC;\nDATA;\n"
        "#1=PRODUCT('asm','Assembly',$,());\n#2=PRODUCT_DEFINITION_FORMATION('',$,#1);\n#3=PRODUCT_DEFINITION('',$,#2,#9);\n"
        "#4=PRODUCT('p1','Bolt \\X\\E9',$,());\n#5=PRODUCT_DEFINITION_FORMATION('',$,#4);\n#6=PRODUCT_DEFINITION('',$,#5,#9);\n"
        "#7=NEXT_ASSEMBLY_USAGE_OCCURRENCE('1','u1','',#3,#6,$);\n"
        "#8=(LENGTH_UNIT()NAMED_UNIT(*)SI_UNIT(.MILLI.,.METRE.));\n#10=GEOMETRIC_TOLERANCE('t','',#1,#1);\n"
        "#11=DATUM_FEATURE('d','',#1,.T.);\nENDSEC;\nEND-ISO-10303-21;\n"
    ).encode("latin-1")
    h = step_header.parse(text)
    assert h.encoding == "latin-1" and "byte" in (h.encoding_note or "")
    assert h.description == ["Pièce ; d'essai"] and h.authors == ["J. Müller"]
    assert h.ap == "AP242" and h.originating_system == "CATIA V5"
    assert h.is_assembly and h.assembly_edges == ["Assembly > Bolt é"]
    assert h.length_unit == "mm" and h.pmi_entities == 2 and set(h.pmi_types) == {"GEOMETRIC_TOLERANCE", "DATUM_FEATURE"}


@needs_real
def test_stl_real() -> None:
    s, _ = stl.read((CAD / "stl/featuretype.STL").read_bytes(), binary=True)
    assert s.triangles == 3476 and s.closed and s.volume == pytest.approx(11.6277, rel=1e-4)
    assert s.bbox_max[0] - s.bbox_min[0] == pytest.approx(5.0)
    b, _ = stl.read((CAD / "stl/busted.STL").read_bytes(), binary=True)
    assert b.triangles == 3878 and b.zero_normals == 3878
    e, _ = stl.read((CAD / "stl/stl_empty_bin.stl").read_bytes(), binary=True)
    assert e.triangles == 0 and not e.closed and e.volume is None


def test_stl_open_mesh_has_no_volume() -> None:
    tris = [[(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 0, 0), (1, 0, 0), (0, 0, 1)]]
    body = b"".join(struct.pack("<12fH", 0, 0, 0, *[c for v in t for c in v], 0) for t in tris)
    s, _ = stl.read(b"x" * 80 + struct.pack("<I", 2) + body, binary=True)
    assert not s.closed and s.open_edges == 4 and s.volume is None  # 5 edges, one shared


@needs_real
def test_dxf_real() -> None:
    t, _ = dxf.read(CAD / "dxf/1002_tray_bottom.DXF")
    assert (t.version, t.unit, t.entity_types) == ("R2000", "inch", {"CIRCLE": 22, "ARC": 12, "LINE": 12})
    assert t.open_outlines == 0 and t.closed_outlines == 24
    b, _ = dxf.read(CAD / "dxf/broken_loop.dxf")
    assert (b.version, b.unit, b.open_outlines) == ("R14", None, 1)
    assert sorted(b.open_endpoints) == [[1.0, 0.0], [1.1, 0.0]]
    w, _ = dxf.read(CAD / "dxf/wrench.dxf")
    assert (w.version, w.entity_types) == ("R2004", {"LINE": 35, "ARC": 4})
    assert w.open_outlines == 0


def test_cad_property_lint() -> None:
    assert lint_cad({"formats": ["step", "iges"], "canonical_unit": "furlong", "assemblies": "yes", "colour": 1}, "cp") == [
        "cp.colour: unknown key (allowed: formats, canonical_unit, unitless_unit, assemblies, require_closed_outlines, parse_timeout, parse_memory, workers)",
        "cp.formats[1]: 'iges' is not one of ['step', 'stl', 'dxf']",
        "cp.canonical_unit: 'furlong' is not a length unit the lab knows (mm, cm, m, um, inch, foot, mil, yard, dm, km, mile, microinch)",
        "cp.assemblies: must be true or false",
    ]
    assert lint_cad(None, "cp") and lint_cad({"formats": ["stl"]}, "cp") == []


# ---------------------------------------------------------------- the sandbox


def hang(job: sandbox.Job) -> dict:
    time.sleep(60)
    return {}


def crash(job: sandbox.Job) -> dict:
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def hog(job: sandbox.Job) -> dict:
    blocks = [bytearray(64 << 20) for _ in range(64)]  # 4 GiB, past the limit
    return {"n": len(blocks)}


def choose(job: sandbox.Job) -> dict:
    """A parser that hangs, crashes or allocates without bound on some files, and parses the rest for real."""
    return {"hang": hang, "crash": crash, "hog": hog}.get(job.key, sandbox.default_target)(job)


@needs_real
def test_sandbox_rejects_hang_crash_and_memory_and_carries_on() -> None:
    good = CAD / "step/nist_ftc_11_asme1_rb.stp"
    jobs = [sandbox.Job("hang", good, "hangs.stp"), sandbox.Job("ok1", good, "washer.stp"),
            sandbox.Job("crash", good, "crashes.stp"), sandbox.Job("hog", good, "hog.stp"),
            sandbox.Job("ok2", CAD / "dxf/wrench.dxf", "wrench.dxf")]
    t0 = time.perf_counter()
    out = sandbox.run(jobs, workers=2, timeout_s=8, memory_bytes=512 << 20, target=choose)
    by = {o.key: o for o in out}
    assert [o.key for o in out] == ["hang", "ok1", "crash", "hog", "ok2"]
    assert by["hang"].kind == "timeout" and "hangs.stp: no result within the time limit of 8 s" in by["hang"].reason
    assert by["crash"].kind == "crash" and "crashes.stp: the parser crashed (SIGSEGV)" in by["crash"].reason
    assert by["hog"].kind == "memory" and "memory limit of 512 MiB" in by["hog"].reason
    assert by["ok1"].ok and by["ok1"].result["geometry"]["faces"] == 6
    assert by["ok2"].ok and by["ok2"].result["dxf"]["version"] == "R2004"
    assert time.perf_counter() - t0 < 30


@needs_real
def test_sandbox_time_limit_kills_the_real_parser() -> None:
    (o,) = sandbox.run([sandbox.Job("k", CAD / "step/nist_ctc_01_asme1_rd.stp", "ctc.stp")], timeout_s=0.05)
    assert o.kind == "timeout" and "ctc.stp" in o.reason


# ---------------------------------------------------------------- fuzzing (no input crashes the pipeline)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADER = (b"ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('d'),'2;1');\nFILE_NAME('n','2020-01-01T00:00:00',('a'),('o'),'p','s','');\n"
          b"FILE_SCHEMA(('AUTOMOTIVE_DESIGN'));\nENDSEC;\nDATA;\n#1=(LENGTH_UNIT()NAMED_UNIT(*)SI_UNIT(.MILLI.,.METRE.));\n"
          b"#2=PRODUCT('p','q',$,());\nENDSEC;\nEND-ISO-10303-21;\n")


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_step_parser_random_bytes(data: bytes) -> None:
    with contextlib.suppress(step_header.StepError):
        step_header.parse(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(HEADER) - 1), st.binary(min_size=0, max_size=8)), max_size=6))
def test_fuzz_step_parser_mutated_header(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(HEADER)
    for pos, ins in edits:
        data[pos:pos + len(ins) // 2 + 1] = ins
    try:
        h = step_header.parse(bytes(data))
    except step_header.StepError:
        return
    assert isinstance(h.entity_count, int) and h.encoding in ("utf-8", "latin-1")


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("'(),#$*.\\X2 0AZ_;=19eE-+\"")), max_size=200))
def test_fuzz_step_params(text: str) -> None:
    with contextlib.suppress(step_header.StepError):
        step_header.parse_params("(" + text + ")")
    step_header.unescape(text)  # never raises


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 1 << 20))
def test_fuzz_dispatch(head: bytes, extra: int) -> None:
    for size in (len(head), len(head) + extra):
        try:
            sn = sniff.sniff_bytes(head, size, "f")
        except sniff.NotCad as e:
            assert e.reason.startswith("f: ")
            continue
        assert sn.format in sniff.FORMATS


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_stl_reader(data: bytes, binary: bool) -> None:
    with contextlib.suppress(stl.StlError):
        stl.read(data, binary)


# ---------------------------------------------------------------- hostile pushes


@needs_real
def test_hostile_cad_pushes_are_rejected_with_reasons(lab: Path, tmp_path: Path) -> None:
    from datalab.contracts import contract
    from datalab.intake import landing

    c = contract.load_all(Path(__file__).resolve().parent.parent / "data_contracts")["urn:datalab:lyon-presses:tooling-cad"]
    z = tmp_path / "bracket.stp"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("bracket.stp", (CAD / "step/nist_ftc_11_asme1_rb.stp").read_bytes())
    bad_dxf = tmp_path / "plate.dxf"
    bad_dxf.write_text("0\nSECTION\n2\nHEADER\n9\n$ACADVER\n1\nAC1015\n0\nENDSEC\n0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\nx\n")
    cut = tmp_path / "cut.stp"
    cut.write_bytes(b"ISO-10303-21;\nHEADER;\nFILE_SCHEMA(('AUTOMOTIVE_DESIGN'));\nENDSEC;\nDATA;\n#1=CARTESIAN_POINT('',(0.,0.,")
    pdf = tmp_path / "../drawing.dxf"  # a name with a path: only its base name is used
    pdf.write_bytes(b"%PDF-1.7\n" + os.urandom(300))
    rec = landing.push(c, [z, bad_dxf, cut, (str(pdf), pdf), CAD / "step/nist_ftc_11_asme1_rb.stp"])
    assert rec.status == "rejected"
    by = {f.name: f.reasons for f in rec.files}
    assert by["bracket.stp"] == ["bracket.stp: the content is a ZIP archive, not STEP, STL or DXF (rule: format by content)"]
    assert by["plate.dxf"][0].startswith("plate.dxf: ezdxf cannot read the drawing:")
    assert by["cut.stp"] == ["cut.stp: not a readable ISO 10303-21 file: the DATA section has no ENDSEC: truncated file?"]
    assert by["drawing.dxf"] == ["drawing.dxf: the content is a PDF document, not STEP, STL or DXF (rule: format by content)"]
    assert by["nist_ftc_11_asme1_rb.stp"] == []  # the good file is fine; the delivery is rejected as a whole


@needs_real
def test_mutated_real_files_never_crash_the_pipeline(tmp_path: Path) -> None:
    """Real files with flipped bytes, cuts and junk, through the sandbox: each is parsed or rejected with a reason."""
    import random

    rng = random.Random(3)
    srcs = ["step/nist_ftc_11_asme1_rb.stp", "step/featuretype.STEP", "stl/featuretype.STL", "dxf/wrench.dxf",
            "dxf/1002_tray_bottom.DXF"]
    jobs = []
    for i in range(30):
        src = CAD / srcs[i % len(srcs)]
        data = bytearray(src.read_bytes())
        for _ in range(rng.randint(1, 20)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.5:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                data[pos:pos] = os.urandom(rng.randint(1, 16))
            else:
                del data[pos:pos + rng.randint(1, 64)]
        if i % 7 == 0:
            data = data[: len(data) // 2]  # truncated
        p = tmp_path / f"m{i:02d}{src.suffix}"
        p.write_bytes(bytes(data))
        jobs.append(sandbox.Job(str(i), p, p.name, tmp_path / f"m{i:02d}.png"))
    out = sandbox.run(jobs, workers=2, timeout_s=30, memory_bytes=1 << 30)
    assert len(out) == 30
    for o in out:
        if o.ok:
            assert o.result["format"] in sniff.FORMATS
        else:
            assert o.reason.startswith(o.name + ":"), o.reason
            assert o.kind in ("rejected", "crash", "timeout", "memory")
    assert any(o.ok for o in out) and any(not o.ok for o in out)
