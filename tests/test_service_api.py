"""End to end over real HTTP: push -> run -> publish -> list -> pull, by the CLI and the client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from datalab.policy import audit_export
from tests.conftest import SPINDLE
from tests.service_harness import Lab, lab_env, sample_file, use_lab

pytestmark = pytest.mark.slow


def _cli(lab: Lab, who: str | None, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = lab_env(lab.home, lab.contracts)
    if who:
        env.update(DATALAB_URL=lab.server.url, DATALAB_TOKEN=lab.tokens[who])
        env["DATALAB_HOME"] = str(lab.home.parent / f"client-{who}")  # the client has no lab of its own
    return subprocess.run([sys.executable, "-m", "datalab.cli.commands", *args], env=env, capture_output=True, text=True,
                          cwd=str(cwd or lab.home.parent), timeout=300)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_push_run_publish_pull_over_http(served_lab: Lab, tmp_path: Path) -> None:
    lab = served_lab
    with lab.as_("firm-a") as c:
        me = c.get("/v1/whoami").json()
        assert (me["name"], me["kind"], me["tenant"]) == ("firm-a", "firm", "bavaria-spindle")
        assert [x["id"] for x in c.get("/v1/provider/contracts").json()] == [SPINDLE]
    # the OpenAPI document describes every route
    spec = lab.server.client().get("/openapi.json").json()
    assert "/v1/provider/contracts/{ref}/deliveries" in spec["paths"]
    assert "/v1/datasets/{name}/versions/{version}/files/{index}" in spec["paths"]

    # a firm pushes with the ordinary CLI, which goes over HTTP because DATALAB_URL/TOKEN are set
    f = sample_file(SPINDLE, tmp_path, 500, 7)
    r = _cli(lab, "firm-a", "push", "bavaria-spindle/spindle-telemetry", str(f), "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["status"] == "accepted" and rec["files"][0]["sha256"] == _sha(f) and rec["pushed_by"] == "firm:firm-a"
    assert not (lab.home.parent / "client-firm-a" / "landing").exists()  # nothing landed on the client side
    r = _cli(lab, "firm-a", "receipts", "--json")
    assert r.returncode == 0, r.stderr
    assert rec["delivery_id"] in {x["delivery_id"] for x in json.loads(r.stdout)}
    assert {x["tenant"] for x in json.loads(r.stdout)} == {"bavaria-spindle"}  # only its own
    # the bytes are in the firm's own area, content-addressed, as a local push would store them
    stored = lab.home / "landing" / "bavaria-spindle" / "accepted" / rec["files"][0]["sha256"][:2] / rec["files"][0]["sha256"]
    assert stored.read_bytes() == f.read_bytes()

    # the lab runs and publishes through the admin endpoints (the same Dagster definitions as the CLI)
    with lab.as_("admin") as c:
        runs = c.post("/v1/admin/run", params={"contract": SPINDLE}, timeout=600).json()
        assert rec["delivery_id"] in {x["delivery_id"] for x in runs} and all(x["validation_ok"] for x in runs)
        pub = c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=600).json()
        assert pub["version"] == "1.0.1"

    # a consumer team lists and pulls with the CLI
    r = _cli(lab, "team-de", "list", "--purpose", "predictive-maintenance", "--json")
    assert r.returncode == 0, r.stderr
    listed = {d["dataset"]: d["versions"] for d in json.loads(r.stdout)}
    assert listed == {"plant-telemetry": ["1.0.0", "1.0.1"]}
    r = _cli(lab, "team-de", "pull", "plant-telemetry@1.0.1", "--purpose", "predictive-maintenance", "--to", str(tmp_path / "got"))
    assert r.returncode == 0, r.stderr
    assert "pulled plant-telemetry@1.0.1" in r.stdout and "checksums verified" in r.stdout
    got = tmp_path / "got" / "plant-telemetry-1.0.1"
    m = json.loads((got / "manifest.json").read_text())
    files = sorted((got / "data").glob("*.parquet"))
    assert [_sha(p) for p in files] == [x["sha256"] for x in m["files"]]
    assert pl.read_parquet(files).height == m["rows"] and m["rows"] > 0
    assert (got / "card.md").read_text().startswith("# ")
    # bit for bit what a local pull of the same version gives
    with use_lab(lab.home, lab.contracts):
        from datalab.store import pull

        local = pull.pull("plant-telemetry@1.0.1", "predictive-maintenance", tmp_path / "local", actor="test")
    assert [_sha(p) for p in local.files] == [_sha(p) for p in files]
    # the datasheet (card, HTML, JSON, plots) arrives as a local pull ships it
    from datalab.store import datasheet

    shipped = [n for n in datasheet.SHIPPED if (local.directory / n).exists()]
    assert len(shipped) == len(datasheet.SHIPPED)
    assert [_sha(got / n) for n in shipped] == [_sha(local.directory / n) for n in shipped]
    # a refused purpose is refused by the CLI too, naming the rule
    r = _cli(lab, "team-de", "pull", "plant-telemetry@1.0.1", "--purpose", "model-training", "--to", str(tmp_path / "no"))
    assert r.returncode == 1 and "prohibited_purposes" in r.stderr
    assert not (tmp_path / "no").exists()


def test_range_requests_and_checksum_header(served_lab: Lab) -> None:
    with served_lab.as_("team-de") as c:
        m = c.get("/v1/datasets/plant-telemetry/versions/1.0.0/manifest", params={"purpose": "research"}).json()
        url = "/v1/datasets/plant-telemetry/versions/1.0.0/files/0"
        full = c.get(url, params={"purpose": "research"})
        assert full.status_code == 200 and full.headers["x-checksum-sha256"] == m["files"][0]["sha256"]
        assert hashlib.sha256(full.content).hexdigest() == m["files"][0]["sha256"]
        assert full.headers["accept-ranges"] == "bytes"
        part = c.get(url, params={"purpose": "research"}, headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == full.content[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(full.content)}"
        tail = c.get(url, params={"purpose": "research"}, headers={"Range": f"bytes={len(full.content) - 5}-"})
        assert tail.status_code == 206 and tail.content == full.content[-5:]
        bad = c.get(url, params={"purpose": "research"}, headers={"Range": f"bytes={len(full.content) + 10}-"})
        assert bad.status_code == 416


def test_tokens_by_cli_and_audit_export(served_lab: Lab, tmp_path: Path) -> None:
    lab = served_lab
    r = _cli(lab, None, "token", "create", "firm-b", "--days", "2", "--label", "plant gateway")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("dl_") and len(token) > 50
    with lab.server.client(token) as c:
        assert c.get("/v1/whoami").json()["name"] == "firm-b"
    # only the hash is stored: the secret appears nowhere in the catalog
    assert token.split("_", 2)[2].encode() not in (lab.home / "catalog.db").read_bytes()
    tid = token.split("_")[1]
    r = _cli(lab, None, "token", "revoke", tid)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    with lab.server.client(token) as c:
        resp = c.get("/v1/whoami")
        assert resp.status_code == 401 and "revoked" in resp.json()["error"]
    # the audit log holds the token changes and verifies; an export verifies on its own, and catches an edit
    out = tmp_path / "audit.jsonl"
    r = _cli(lab, None, "audit", "export", "--to", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {("token", "created"), ("token", "revoked"), ("auth", "refused")} <= {(e["action"], e["decision"]) for e in lines}
    with use_lab(lab.home, lab.contracts):  # the lab's audit key, as the auditor verifies on its host
        assert audit_export.verify_export(out) == []
        lines[3]["actor"] = "someone-else"
        out.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines))
        assert any("edited" in p for p in audit_export.verify_export(out))
    r = _cli(lab, None, "audit", "verify")
    assert r.returncode == 0 and "intact" in r.stdout


def test_principals_by_cli_and_api(served_lab: Lab) -> None:
    r = _cli(served_lab, None, "principal", "add", "team-x", "--kind", "consumer", "--site", "nowhere")
    assert r.returncode == 1 and "needs --site" in r.stderr
    with served_lab.as_("admin") as c:
        r = c.post("/v1/admin/principals", json={"name": "team-se", "kind": "consumer", "site": "kajaani"})
        assert r.status_code == 201 and r.json()["roles"] == ["pull"]
        assert c.post("/v1/admin/principals", json={"name": "team-se", "kind": "consumer", "site": "kajaani"}).status_code == 409
        r = c.post("/v1/admin/principals", json={"name": "../evil", "kind": "firm", "tenant": "x"})
        assert r.status_code == 400 and "not allowed" in r.json()["error"]
        r = c.post("/v1/admin/principals", json={"name": "f2", "kind": "firm", "tenant": "lyon-presses", "roles": ["admin"]})
        assert r.status_code == 400 and "not available" in r.json()["error"]
        names = {p["name"] for p in c.get("/v1/admin/principals").json()}
    assert names >= {"firm-a", "team-de", "admin", "team-se"}


CAD_CONTRACT = "urn:datalab:lyon-presses:tooling-cad"


def test_cad_version_over_http(published_template, realdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CAD version's original files, thumbnails and datasheet come over HTTP, checksums verified.

    The version is export-controlled: over HTTP the clearance is the consumer principal's
    role, never the server's environment (which here even says "cleared", and must not count).
    The firm pushes real STEP and STL files with the ordinary CLI over HTTP.
    """
    from datalab.policy import auth
    from tests.service_harness import lab_from_template

    monkeypatch.setenv("DATALAB_EXPORT_CLEARED", "1")  # the server process's own setting: ignored for principals
    lab = lab_from_template(published_template, tmp_path)
    with use_lab(lab.home, lab.contracts):
        auth.add_principal("team-cleared", "consumer", site="munich", roles=["pull", "export-cleared"], actor="test")
        lab.tokens["team-cleared"] = auth.create_token("team-cleared", 1, "tests", actor="test")[0]
    try:
        cad = realdata / "cad"
        sent = [cad / "step" / "nist_ftc_11_asme1_rb.stp", cad / "stl" / "featuretype.STL"]
        r = _cli(lab, "firm-b", "push", "lyon-presses/tooling-cad", *map(str, sent), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "accepted"
        with lab.as_("admin") as c:
            runs = c.post("/v1/admin/run", params={"contract": CAD_CONTRACT}, timeout=600).json()
            assert runs and all(x["validation_ok"] for x in runs), runs
            pub = c.post("/v1/admin/datasets/tooling-cad/publish", timeout=600)
            assert pub.status_code == 200, pub.text
        # a consumer without the export-cleared role may never reach the version: to it the dataset does not exist
        # (issue 17: a refusal would tell it exists; exit 3 = not found, issue 20), it gets nothing, the audit names the rule
        r = _cli(lab, "team-de", "pull", "tooling-cad@1.0.0", "--purpose", "part-similarity", "--to", str(tmp_path / "no"))
        assert r.returncode == 3 and "dataset 'tooling-cad' has no published version" in r.stderr
        assert not (tmp_path / "no").exists()
        with lab.as_("team-de") as c:
            listed = c.get("/v1/datasets", params={"purpose": "part-similarity"}).json()
            assert "tooling-cad" not in {d["dataset"] for d in listed}
        r = _cli(lab, "team-cleared", "pull", "tooling-cad@1.0.0", "--purpose", "part-similarity", "--to", str(tmp_path / "got"))
        assert r.returncode == 0, r.stderr
        got = tmp_path / "got" / "tooling-cad-1.0.0"
        m = json.loads((got / "manifest.json").read_text())
        cad_files = sorted(p for p in (got / "files").iterdir() if p.is_file())
        # the originals, bit for bit, under their content-addressed names
        assert sorted(_sha(p) for p in cad_files) == sorted(_sha(p) for p in sent) == sorted(f["sha256"] for f in m["cad"]["files"])
        thumbs = sorted((got / "files" / "thumbs").glob("*.png"))
        assert len(thumbs) == sum(1 for f in m["cad"]["files"] if f["thumbnail"]) > 0
        assert all(p.read_bytes().startswith(b"\x89PNG") for p in thumbs)
        # the CAD card and its datasheet files, as a local pull ships them
        assert "nist_ftc_11_asme1_rb.stp" in (got / "card.md").read_text()
        assert (got / "card.html").read_text().startswith("<!doctype html>")
        # datasheet file names are looked up, never joined as paths
        with lab.as_("team-cleared") as c:
            base = "/v1/datasets/tooling-cad/versions/1.0.0"
            for bad in ("manifest.json", "..%2Fmanifest.json", "..%2F..%2Fcatalog.db", "%2Fetc%2Fpasswd"):
                resp = c.get(f"{base}/card-files/{bad}", params={"purpose": "part-similarity"})
                assert resp.status_code == 404, (bad, resp.status_code)
                assert "sha256" not in resp.text
            assert c.get(f"{base}/cad-files/99", params={"purpose": "part-similarity"}).status_code == 404
            # a purpose the contract prohibits is refused for the files too
            resp = c.get(f"{base}/cad-files/0", params={"purpose": "model-training"})
            assert resp.status_code == 403 and "prohibited" in resp.text
    finally:
        lab.server.stop()
