"""Routes for consumer teams: datasets, manifests, cards and files, for a declared purpose.

Every call names its purpose (``?purpose=``) and is checked against the
version's effective policy, with the consumer's own site (set on its
principal, not by the request) checked against the residency. Listing shows
only what the purpose and site may reach; a direct request for anything else
is refused with the rule, and audited.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse

from datalab import auth, datasets
from datalab import catalog as cat
from datalab.config import Settings, settings
from datalab.errors import NotFound, PolicyRefused
from datalab.publish import list_versions, read_manifest
from datalab.pull import authorise, check_policy
from datalab.service.deps import ApiError, need

router = APIRouter(prefix="/v1/datasets", tags=["consumers"])
consumer = need("consumer", "pull")
PURPOSE = Query(..., min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9.-]*$",
                description="declared purpose of use, e.g. predictive-maintenance")
NAME = PathParam(..., max_length=128)
VERSION = PathParam(..., max_length=32, description="x.y.z or latest")


def _site_settings(p: auth.Principal) -> Settings:
    """The lab's settings with the consumer's registered site (residency is checked against it)."""
    return dataclasses.replace(settings(), site=p.site)


def _authorised(name: str, version: str, purpose: str, p: auth.Principal) -> tuple[dict[str, Any], Settings]:
    s = _site_settings(p)
    try:
        return authorise(name, version, purpose, p.actor, s), s
    except NotFound as e:
        raise ApiError(404, str(e), audited=True) from None  # authorise audited it
    except PolicyRefused as e:
        raise ApiError(403, str(e), audited=True) from None


@router.get("", summary="Datasets and the versions the declared purpose may reach from the caller's site")
def list_visible(purpose: str = PURPOSE, p: auth.Principal = Depends(consumer)) -> list[dict[str, Any]]:
    s = _site_settings(p)
    out = []
    for name in datasets.list_specs(s.contracts_dir):
        visible = []
        for v in list_versions(name, s):
            m = read_manifest(name, v["version"], s)
            try:
                check_policy(m, purpose, s)
            except PolicyRefused:
                continue
            visible.append({"version": m["version"], "rows": m["rows"], "created_at": m["created_at"],
                            "status": m["status"], "files": len(m["files"])})
        if visible:
            out.append({"dataset": name, "title": m.get("title", name), "versions": visible,
                        "latest": visible[-1]["version"]})
    return out


@router.get("/{name}/versions/{version}/manifest", summary="A version's manifest (audited as a pull)")
def manifest(name: str = NAME, version: str = VERSION, purpose: str = PURPOSE,
             p: auth.Principal = Depends(consumer)) -> dict[str, Any]:
    m, s = _authorised(name, version, purpose, p)
    cat.Catalog(s.catalog_url).audit(p.actor, "pull", f"{name}@{m['version']}", "allowed",
                                     {"purpose": purpose, "site": p.site, "what": "manifest",
                                      "files": len(m["files"]), "rows": m["rows"]})
    return m


@router.get("/{name}/versions/{version}/card", summary="A version's dataset card (Markdown)",
            response_class=PlainTextResponse)
def card(name: str = NAME, version: str = VERSION, purpose: str = PURPOSE,
         p: auth.Principal = Depends(consumer)) -> PlainTextResponse:
    m, s = _authorised(name, version, purpose, p)
    path = s.versions / name / m["version"] / "card.md"
    return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")


@router.get(
    "/{name}/versions/{version}/files/{index}",
    summary="One data file of a version, streamed; supports Range; X-Checksum-Sha256 is the whole file's",
    responses={206: {"description": "the requested byte range"}},
)
def file(request: Request, name: str = NAME, version: str = VERSION,
         index: int = PathParam(..., ge=0, le=1_000_000), purpose: str = PURPOSE,
         p: auth.Principal = Depends(consumer)) -> FileResponse:
    m, s = _authorised(name, version, purpose, p)
    if index >= len(m["files"]):
        raise ApiError(404, f"{name}@{m['version']} has {len(m['files'])} file(s); there is no file {index}")
    f = m["files"][index]
    path = (s.home / f["path"]).resolve()
    if not path.is_relative_to(s.home.resolve()) or not path.is_file():
        raise ApiError(500, f"{name}@{m['version']}: file {index} is missing from the lab's store")
    cat.Catalog(s.catalog_url).audit(p.actor, "download", f"{name}@{m['version']}", "allowed", {
        "purpose": purpose, "site": p.site, "file": index, "sha256": f["sha256"],
        "range": request.headers.get("range", "")[:100]})
    return FileResponse(Path(path), media_type="application/vnd.apache.parquet",
                        filename=f"part-{index:05d}.parquet",
                        headers={"X-Checksum-Sha256": f["sha256"], "ETag": f'"{f["sha256"]}"',
                                 "Cache-Control": "no-store"})
