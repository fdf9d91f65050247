"""DSP transfer process between real sites (issue 18 item 4).

One test walks the whole life of a replica because each step depends on the
last: a corrupted file is never registered, a provider SIGKILLed mid-transfer
leaves nothing registered, the rerun resumes by Range and registers the
verified replica, which is then usable at the consumer only for the agreed
purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from datalab.errors import DatalabError, IntegrityError, PolicyRefused
from datalab.federation import dsp
from datalab.federation.client import PeerError, negotiate, transfer
from tests.federation_harness import Site
from tests.test_federation import audit_of, token, valid


def catalog_row(site: Site, dataset: str, version: str) -> object:
    import sqlalchemy as sa

    from datalab.config import settings
    from datalab.store import catalog as cat

    with site.here(), cat.Catalog(settings().catalog_url).begin() as conn:
        return conn.execute(sa.select(cat.dataset_versions).where(
            (cat.dataset_versions.c.dataset == dataset) & (cat.dataset_versions.c.version == version))).first()


def provider_file(a: Site) -> Path:
    m = json.loads((a.home / "versions" / "plant-telemetry" / "1.0.0" / "manifest.json").read_text())
    return a.home / m["files"][0]["path"]


def test_transfer_verifies_survives_a_provider_crash_and_binds_the_purpose(federation: dict[str, Site], tmp_path: Path) -> None:
    a, b, c = federation["munich"], federation["stuttgart"], federation["kajaani"]
    with b.here():
        n = negotiate("munich", "plant-telemetry@1.0.0", "research", timeout=20)
    assert n.state == "FINALIZED", n.reason
    agreement = n.agreement["@id"]

    # 1. a file that does not match the manifest: refused, nothing registered
    f = provider_file(a)
    good = f.read_bytes()
    f.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    try:
        with b.here(), pytest.raises(IntegrityError, match="does not match"):
            transfer(agreement)
    finally:
        f.write_bytes(good)
    assert catalog_row(b, "plant-telemetry", "1.0.0") is None
    assert not (b.home / "versions" / "plant-telemetry").exists()

    # 2. SIGKILL the provider in the middle of the download: nothing registered, the partial file kept
    a.stop()
    a.extra_env = {"DATALAB_DSP_RATE_LIMIT": str(max(4096, len(good) // 4))}
    a.start()
    got = []

    def kill_midway(n_bytes: int) -> None:
        got.append(n_bytes)
        if a.proc and a.proc.poll() is None:
            a.kill()

    with b.here(), pytest.raises(PeerError, match="interrupted"):
        transfer(agreement, progress=kill_midway)
    assert got and sum(got) < len(good)
    assert catalog_row(b, "plant-telemetry", "1.0.0") is None
    assert not (b.home / "versions" / "plant-telemetry").exists()
    parts = list((b.home / "federation" / "incoming").rglob("*.part"))
    assert parts and 0 < parts[0].stat().st_size < len(good)

    # 3. restart, rerun: resumed by Range, verified, registered
    a.extra_env = {}
    a.start()
    with b.here():
        m = transfer(agreement)
    assert m.replica["agreement"] == agreement and m.replica["purpose"] == "research"
    assert catalog_row(b, "plant-telemetry", "1.0.0") is not None
    resumed = [e for e in audit_of(a, "dsp.data") if e["decision"] == "file"]
    assert any(e["detail"]["from"] > 0 for e in resumed), resumed  # the rerun asked for the rest only
    assert [e["decision"] for e in audit_of(a, "dsp.transfer")][-1] == "completed"
    assert not list((b.home / "federation" / "incoming").rglob("*.part"))

    # 4. at the consumer: like a local version, only for the agreed purpose; the card says where from
    from datalab.store.pull import open_dataset, pull

    with b.here():
        res = pull("plant-telemetry@1.0.0", "research", tmp_path / "out")
        assert res.rows == m.rows > 0
        assert open_dataset("plant-telemetry", "1.0.0", "research.publication").collect().height == m.rows
        with pytest.raises(PolicyRefused, match="only for purpose 'research'"):
            open_dataset("plant-telemetry", "1.0.0", "predictive-maintenance")
        with pytest.raises(DatalabError, match="already in this site's catalog"):
            transfer(agreement)
    card = (b.home / "versions" / "plant-telemetry" / "1.0.0" / "card.md").read_text()
    assert "Replica of `plant-telemetry@1.0.0` from site **munich**" in card and agreement in card

    # 5. the data plane refuses a wrong secret; another site cannot use this agreement
    with b.here():
        from datalab.federation import transfer as tr

        [t] = [t for t in _transfers(b) if t.state == "COMPLETED"]
    r = httpx.get(f"{a.url}/dsp/data/{t.provider_pid}/manifest", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 403 and valid(r.json())["@type"] == "TransferError"
    r = httpx.get(f"{a.url}/dsp/data/{t.provider_pid}/manifest",
                  headers={"Authorization": "Bearer " + t.address["endpointProperties"][0]["value"]}, timeout=10)
    assert r.status_code == 403 and "COMPLETED" in r.json()["reason"][0]  # the address died with the transfer
    req = {"@context": dsp.CONTEXT, "@type": "TransferRequestMessage", "consumerPid": "urn:uuid:k",
           "agreementId": agreement, "format": "HttpData-PULL", "callbackAddress": c.url + "/dsp/callback"}
    r = httpx.post(f"{a.url}/dsp/transfers/request", json=valid(req), headers={"Authorization": token(c, "munich")}, timeout=10)
    assert r.status_code == 404 and valid(r.json())["@type"] == "TransferError"
    del tr


def _transfers(site: Site) -> list:
    from datalab.federation import transfer as tr

    with site.here():
        c = tr._conn(None)
        try:
            return [tr._row(r) for r in c.execute(f"SELECT {tr._COLS} FROM transfers")]
        finally:
            c.close()
