"""``datalab replicate SITE NAME@VERSION --purpose P``: the DSP negotiation and transfer as one command (issue 18).

Run as a user runs it: the ``datalab`` command in a subprocess with the
consuming site's environment, so the exit codes and the one-line errors are
the CLI's own. munich, stuttgart and kajaani here are their own three sites
(built by the harness, own homes and ports), not the session's federation: the transfer
and withdrawal tests need stuttgart without a replica of plant-telemetry@1.0.0,
and this test must start from that state too, in any order.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.federation_harness import Site, build
from tests.test_federation import audit_of
from tests.test_federation_transfer import catalog_row

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def pair(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    """munich (plant-telemetry 1.0.0 published), stuttgart (DE) and kajaani (FI), served, peers of each other."""
    sites = build(published_template, tmp_path_factory.mktemp("replicate"), ("munich", "stuttgart", "kajaani"))
    try:
        for s in sites.values():
            s.start()
        yield sites
    finally:
        for s in sites.values():
            s.stop()


def datalab(site: Site, *args: str) -> subprocess.CompletedProcess:
    """``datalab ARGS`` as ``site``'s operator would type it."""
    return subprocess.run([sys.executable, "-m", "datalab.cli.commands", *args], env=site.env(),
                          cwd=site.home.parent, capture_output=True, text=True, timeout=180)


def one_error(r: subprocess.CompletedProcess) -> str:
    """The CLI's single ``error:`` line (no traceback), whitespace folded."""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and TRACEBACK not in r.stdout + r.stderr, r.stdout + r.stderr
    return " ".join(r.stderr.split())


def test_replicate_negotiates_transfers_and_registers_a_purpose_bound_replica(pair: dict[str, Site], tmp_path: Path) -> None:
    a, b, c = pair["munich"], pair["stuttgart"], pair["kajaani"]

    # 1. a prohibited purpose: refused by munich with the rule, exit 1, nothing registered or downloaded
    r = datalab(b, "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "model-training", "--timeout", "60")
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_error(r)
    assert "munich refused to replicate plant-telemetry@1.0.0 for model-training" in line
    assert "refused by rule 'prohibited_purposes'" in line and "set by input ps_" in line
    assert "lyon" not in line  # the input is named by its pseudonym, never the firm's contract
    assert catalog_row(b, "plant-telemetry", "1.0.0") is None
    assert not (b.home / "versions" / "plant-telemetry").exists()
    assert not (b.home / "federation" / "incoming").exists() or not any((b.home / "federation" / "incoming").iterdir())
    # audited at both sites, as every negotiation is
    ends = [e for e in audit_of(a, "dsp.negotiation") if e["decision"] == "terminated"]
    assert ends and ends[-1]["detail"]["rule"] == "prohibited_purposes"
    assert any(e["decision"] == "terminated" for e in audit_of(b, "dsp.negotiation"))

    # 2. research: agreed, transferred, verified, registered; the output says where and for what
    r = datalab(b, "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "research", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    where = b.home / "versions" / "plant-telemetry" / "1.0.0"
    assert "replica plant-telemetry@1.0.0 from munich registered" in out and str(where) in out
    assert out.endswith("usable for research only"), out
    row = catalog_row(b, "plant-telemetry", "1.0.0")
    assert row is not None and row.table_ident == "replica:munich" and row.status == "active"
    assert [e["decision"] for e in audit_of(b, "dsp.transfer")][-1] == "completed"
    assert [e["decision"] for e in audit_of(a, "dsp.transfer")][-1] == "completed"

    # 3. pullable for research (and its narrower purposes) only
    from datalab.errors import PolicyRefused
    from datalab.store.pull import open_dataset, pull

    with b.here():
        res = pull("plant-telemetry@1.0.0", "research", tmp_path / "out")
        assert res.rows > 0
        assert open_dataset("plant-telemetry", "1.0.0", "research.publication").collect().height == res.rows
        with pytest.raises(PolicyRefused, match="only for purpose 'research'"):
            open_dataset("plant-telemetry", "1.0.0", "predictive-maintenance")
    r = datalab(b, "pull", "plant-telemetry@1.0.0", "--purpose", "predictive-maintenance", "--to", str(tmp_path / "pm"))
    assert r.returncode == 1 and "agreement" in one_error(r)

    # 4. a second run: already here, one line, nothing asked of munich (a replica never replaces a version)
    agreements = len([e for e in audit_of(a, "dsp.negotiation") if e["decision"] == "agreed"])
    r = datalab(b, "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "research")
    assert r.returncode == 1
    line = one_error(r)
    assert "plant-telemetry@1.0.0 is already in this site's catalog (a replica from munich for research" in line
    assert "a replica never replaces a version" in line
    assert len([e for e in audit_of(a, "dsp.negotiation") if e["decision"] == "agreed"]) == agreements
    refused = [e for e in audit_of(b, "replicate") if e["decision"] == "refused"]
    assert refused and refused[-1]["detail"]["rule"] == "exists"

    # 5. kajaani (FI) is outside the residency: refused with the rule, pointed to compute-to-data instead
    r = datalab(c, "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "research", "--timeout", "60")
    assert r.returncode == 1
    line = one_error(r)
    assert "refused by rule 'residency': site kajaani (FI) is outside the residency ['DE']" in line
    assert "`datalab query munich plant-telemetry@1.0.0 --purpose research` aggregates it there" in line
    assert catalog_row(c, "plant-telemetry", "1.0.0") is None

    # 6. usage mistakes: one line, the kind's exit code
    r = datalab(b, "replicate", "munich", "plant-telemetry", "--purpose", "research")
    assert r.returncode == 2 and "DATASET@VERSION" in one_error(r)
    r = datalab(b, "replicate", "garching-open", "plant-telemetry@1.0.0", "--purpose", "research")
    assert r.returncode == 1 and "already in this site's catalog" in one_error(r)  # checked before any peer
    r = datalab(b, "replicate", "garching-open", "plant-telemetry@9.9.9", "--purpose", "research")
    assert r.returncode == 3 and "no peer 'garching-open'" in one_error(r)
