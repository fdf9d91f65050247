"""Routes for consumer teams: datasets, manifests, cards and files, for a declared purpose.

Every call names its purpose (``?purpose=``) and is checked against the
version's effective policy, with the consumer's own site (set on its
principal, not by the request) checked against the residency. Listing shows
only what the purpose and site may reach; a direct request for anything else
is refused with the rule, and audited.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse

from datalab.config import Settings, settings
from datalab.contracts import datasets
from datalab.errors import DatalabError, NotFound, PolicyRefused
from datalab.intake import landing
from datalab.kinds import kind_of_manifest
from datalab.policy import auth
from datalab.policy.firm_names import consumer_manifest, consumer_message
from datalab.service.deps import ApiError, need
from datalab.store import catalog as cat
from datalab.store import datasheet
from datalab.store.manifest import Manifest
from datalab.store.manifests import list_versions, read_manifest
from datalab.store.pull import authorise, check_policy
from datalab.store.storage import store, version_key

router = APIRouter(prefix="/v1/datasets", tags=["consumers"])
consumer = need("consumer", "pull")
PURPOSE = Query(..., min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9.-]*$",
                description="declared purpose of use, e.g. predictive-maintenance")
NAME = PathParam(..., max_length=128)
VERSION = PathParam(..., max_length=32, description="x.y.z or latest")


def _site_settings(p: auth.Principal) -> Settings:
    """The lab's settings with the consumer's registered site (residency is checked against it)."""
    return dataclasses.replace(settings(), site=p.site)


def _authorised(name: str, version: str, purpose: str, p: auth.Principal) -> tuple[Manifest, Settings]:
    s = _site_settings(p)
    try:
        return authorise(name, version, purpose, p.actor, s, auth.clearance_env(p), hidden_as_missing=True), s
    except NotFound as e:
        raise ApiError(404, consumer_message(str(e), name, version, s), audited=True) from None  # authorise audited it
    except PolicyRefused as e:  # the rule's message names the inputs that set it: masked firms by their pseudonym
        raise ApiError(403, consumer_message(str(e), name, version, s), audited=True) from None


@router.get("", summary="Datasets and the versions the declared purpose may reach from the caller's site")
def list_visible(purpose: str = PURPOSE, p: auth.Principal = Depends(consumer)) -> list[dict[str, Any]]:
    s = _site_settings(p)
    out = []
    for name in datasets.list_specs(s.contracts_dir):
        visible = []
        for v in list_versions(name, s):
            m = read_manifest(name, v["version"], s)
            try:
                check_policy(m, purpose, s, auth.clearance_env(p))
            except PolicyRefused:
                continue
            visible.append({"version": m.version, "rows": m.rows, "created_at": m.created_at,
                            "status": m.status, "files": len(m.files)})
        if visible:
            out.append({"dataset": name, "title": m.title, "versions": visible,
                        "latest": visible[-1]["version"]})
    return out


@router.get("/{name}/versions/{version}/manifest", summary="A version's manifest (audited as a pull)")
def manifest(name: str = NAME, version: str = VERSION, purpose: str = PURPOSE,
             p: auth.Principal = Depends(consumer)) -> dict[str, Any]:
    m, s = _authorised(name, version, purpose, p)
    cat.Catalog(s.catalog_url).audit(p.actor, "pull", f"{name}@{m.version}", "allowed",
                                     {"purpose": purpose, "site": p.site, "what": "manifest",
                                      "files": len(m.files), "rows": m.rows})
    return consumer_manifest(m, s)


@router.get("/{name}/versions/{version}/card", summary="A version's dataset card (Markdown)",
            response_class=PlainTextResponse)
def card(name: str = NAME, version: str = VERSION, purpose: str = PURPOSE,
         p: auth.Principal = Depends(consumer)) -> PlainTextResponse:
    m, s = _authorised(name, version, purpose, p)
    text = store(s).read_text(version_key(name, m.version, "card.md"))
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")


@router.get(
    "/{name}/versions/{version}/files/{index}",
    summary="One data file of a version, streamed; supports Range; X-Checksum-Sha256 is the whole file's",
    responses={206: {"description": "the requested byte range"}},
)
def file(request: Request, name: str = NAME, version: str = VERSION,
         index: int = PathParam(..., ge=0, le=1_000_000), purpose: str = PURPOSE,
         p: auth.Principal = Depends(consumer)) -> Response:
    m, s = _authorised(name, version, purpose, p)
    if index >= len(m.files):
        raise ApiError(404, f"{name}@{m.version} has {len(m.files)} file(s); there is no file {index}")
    f = m.files[index]
    return _serve(request, m, s, p, purpose, f.path, f.sha256, "application/vnd.apache.parquet",
                  f"part-{index:05d}.parquet", {"file": index})


@router.get(
    "/{name}/versions/{version}/cad-files/{index}",
    summary="One original CAD file of a CAD version (or its thumbnail with ?thumbnail=true), streamed with its checksum",
    responses={206: {"description": "the requested byte range"}},
)
def cad_file(request: Request, name: str = NAME, version: str = VERSION,
             index: int = PathParam(..., ge=0, le=1_000_000), purpose: str = PURPOSE,
             thumbnail: bool = Query(False), p: auth.Principal = Depends(consumer)) -> Response:
    """The files of a CAD version are versioned with its table; a remote pull must bring both."""
    m, s = _authorised(name, version, purpose, p)
    attached = kind_of_manifest(m).attached(m)  # the files the version's kind attached (datalab.kinds)
    files = [a for a in attached if a.listed]
    if index >= len(files):
        raise ApiError(404, f"{name}@{m.version} has {len(files)} CAD file(s); there is no CAD file {index}")
    f = files[index]
    if thumbnail:
        t = next((a for a in attached if not a.listed and a.route == f.route), None)
        if t is None:
            raise ApiError(404, f"{name}@{m.version}: CAD file {index} has no thumbnail")
        return _serve(request, m, s, p, purpose, t.path, t.sha256, "image/png", t.name,
                      {"cad_file": index, "thumbnail": True})
    return _serve(request, m, s, p, purpose, f.path, f.sha256, "application/octet-stream",
                  landing.safe_name(f.name), {"cad_file": index})


@router.get("/{name}/versions/{version}/card-files/{fname}",
            summary="One file of the version's datasheet (card.html, datasheet.json, the plots)")
def card_file(request: Request, name: str = NAME, version: str = VERSION,
              fname: str = PathParam(..., max_length=64), purpose: str = PURPOSE,
              p: auth.Principal = Depends(consumer)) -> Response:
    """Only the datasheet's own file names are served: the name is looked up, never joined as a path."""
    m, s = _authorised(name, version, purpose, p)
    if fname not in datasheet.SHIPPED:
        raise ApiError(404, f"{name}@{m.version}: the datasheet has no file {fname[:64]!r} (files: {', '.join(datasheet.SHIPPED)})")
    key = version_key(name, m.version, fname)
    try:
        sha = hashlib.sha256(store(s).read_bytes(key)).hexdigest()  # datasheet files are small (cards, PNGs)
    except FileNotFoundError:
        raise ApiError(404, f"{name}@{m.version}: the datasheet has no file {fname!r}") from None
    media = {".md": "text/markdown", ".html": "text/html", ".json": "application/json", ".png": "image/png"}
    return _serve(request, m, s, p, purpose, key, sha,
                  media.get(Path(fname).suffix, "application/octet-stream"), fname, {"card_file": fname})


def _serve(request: Request, m: Manifest, s: Settings, p: auth.Principal, purpose: str, rel: str, sha: str,
           media: str, filename: str, what: dict[str, Any]) -> Response:
    """Stream a stored file of a version (Range supported) after checking it lies in the lab; audited.

    ``rel`` is the file's key in the lab's store (checked: no '..'). A local
    file goes out through ``FileResponse``; an object is streamed from the
    object store, only the requested range read (``_object_response``).
    """
    st = store(s)
    try:
        if st.is_local:
            path = st.local(rel)
            if not path.resolve().is_relative_to(s.home.resolve()) or not path.is_file():
                raise FileNotFoundError(rel)
        size = st.size(rel)
    except (FileNotFoundError, DatalabError):
        raise ApiError(500, f"{m.dataset}@{m.version}: a file is missing from the lab's store") from None
    cat.Catalog(s.catalog_url).audit(p.actor, "download", f"{m.dataset}@{m.version}", "allowed", {
        "purpose": purpose, "site": p.site, **what, "sha256": sha,
        "range": request.headers.get("range", "")[:100]})
    headers = {"X-Checksum-Sha256": sha, "ETag": f'"{sha}"', "Cache-Control": "no-store"}
    if st.is_local:
        return FileResponse(path, media_type=media, filename=filename, headers=headers)
    return _object_response(st, rel, size, request.headers.get("range"), media, filename, headers)


def _object_response(st: Any, key: str, size: int, rng: str | None, media: str, filename: str,
                     headers: dict[str, str]) -> Response:
    """An object of the store, whole or one byte range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``), streamed."""
    start, end = 0, size - 1
    if rng:
        unit, _, spec = rng.partition("=")
        first, dash, last = spec.strip().partition("-")
        try:
            if unit.strip() != "bytes" or "," in spec or not dash:
                raise ValueError
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:  # a suffix: the last n bytes
                start, end = max(0, size - int(last)), size - 1
            if start < 0 or start > end or start >= size:
                raise ValueError
        except ValueError:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})

    def body() -> Any:
        with st.open_input(key) as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(1 << 20, left))):
                left -= len(chunk)
                yield chunk

    out = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1),
           "Content-Disposition": f'attachment; filename="{filename}"'}
    if rng:
        out["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(body(), status_code=206 if rng else 200, headers=out, media_type=media)
