"""Routes for lab admins: principals, tokens, the audit log, and running the pipelines.

Run and publish go through the same Dagster definitions as ``datalab run`` /
``datalab publish``: the runner the Dagster layer provides (datalab/runs.py; the core never imports Dagster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from datalab import runs
from datalab.config import settings
from datalab.errors import DatalabError, NotFound
from datalab.policy import auth
from datalab.service.deps import ApiError, need
from datalab.store import catalog as cat

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class NewPrincipal(BaseModel):
    name: str = Field(..., max_length=64)
    kind: str = Field(..., pattern="^(firm|consumer|admin)$")
    tenant: str | None = Field(None, max_length=64)
    site: str | None = Field(None, max_length=64)
    roles: list[str] | None = Field(None, max_length=10)


class NewToken(BaseModel):
    principal: str = Field(..., max_length=64)
    ttl_days: int = Field(auth.DEFAULT_TTL_DAYS, ge=1, le=auth.MAX_TTL_DAYS)
    label: str = Field("", max_length=200)


@router.get("/contracts/broken", summary="Provider contracts that do not load, with every problem")
def broken_contracts(p: auth.Principal = Depends(need("admin"))) -> list[dict[str, Any]]:
    from datalab.service.deps import contracts

    s = settings()
    known = contracts(s)
    return [{"path": str(Path(path).relative_to(s.contracts_dir)) if Path(path).is_relative_to(s.contracts_dir) else path,
             "tenant": Path(path).parent.name, "problems": problems}
            for path, problems in sorted(getattr(known, "broken", {}).items())]


@router.get("/principals", summary="All principals")
def principals(p: auth.Principal = Depends(need("admin", "principals"))) -> list[dict[str, Any]]:
    return [x.to_dict() for x in auth.list_principals()]


@router.post("/principals", status_code=201, summary="Register a principal (audited)")
def add_principal(body: NewPrincipal, p: auth.Principal = Depends(need("admin", "principals"))) -> dict[str, Any]:
    try:
        return auth.add_principal(body.name, body.kind, body.tenant, body.site, body.roles, actor=p.actor).to_dict()
    except (DatalabError, ValueError) as e:
        raise ApiError(409 if "exists" in str(e) else 400, str(e)) from None


@router.post("/principals/{name}/disable", summary="Disable a principal: its tokens are refused at once (audited)")
def disable_principal(name: str = PathParam(..., max_length=64),
                      p: auth.Principal = Depends(need("admin", "principals"))) -> dict[str, Any]:
    return _set_disabled(name, True, p)


@router.post("/principals/{name}/enable", summary="Enable a disabled principal again (audited)")
def enable_principal(name: str = PathParam(..., max_length=64),
                     p: auth.Principal = Depends(need("admin", "principals"))) -> dict[str, Any]:
    return _set_disabled(name, False, p)


def _set_disabled(name: str, disabled: bool, p: auth.Principal) -> dict[str, Any]:
    if disabled and name == p.name:
        raise ApiError(400, "an admin cannot disable itself (ask another admin, or use the CLI on the lab host)")
    try:
        return auth.set_disabled(name, disabled, actor=p.actor).to_dict()
    except NotFound as e:
        raise ApiError(404, str(e)) from None


@router.get("/tokens", summary="Tokens (never their secrets)")
def tokens(principal: str | None = Query(None, max_length=64),
           p: auth.Principal = Depends(need("admin", "tokens"))) -> list[dict[str, Any]]:
    return [t.to_dict() for t in auth.list_tokens(principal)]


@router.post("/tokens", status_code=201, summary="Create a token; the token is in this answer only")
def create_token(body: NewToken, p: auth.Principal = Depends(need("admin", "tokens"))) -> dict[str, Any]:
    try:
        token, info = auth.create_token(body.principal, body.ttl_days, body.label, actor=p.actor)
    except NotFound as e:
        raise ApiError(404, str(e)) from None
    except DatalabError as e:
        raise ApiError(400, str(e)) from None
    return {"token": token, **info.to_dict()}


@router.delete("/tokens/{token_id}", summary="Revoke a token at once (audited)")
def revoke_token(token_id: str = PathParam(..., max_length=12),
                 p: auth.Principal = Depends(need("admin", "tokens"))) -> dict[str, Any]:
    try:
        return auth.revoke_token(token_id, actor=p.actor).to_dict()
    except NotFound as e:
        raise ApiError(404, str(e)) from None


@router.get("/audit", summary="Audit entries after a sequence number, oldest first")
def audit(after: int = Query(0, ge=0, le=2**63 - 1), limit: int = Query(500, ge=1, le=5000),
          action: str | None = Query(None, max_length=32),
          p: auth.Principal = Depends(need("admin", "audit"))) -> list[dict[str, Any]]:
    import json

    import sqlalchemy as sa

    q = sa.select(cat.audit).where(cat.audit.c.seq > after).order_by(cat.audit.c.seq).limit(limit)
    if action:
        q = q.where(cat.audit.c.action == action)
    with cat.Catalog(settings().catalog_url).begin() as conn:
        return [{**{k: v for k, v in r._mapping.items() if k != "detail"}, "detail": json.loads(r.detail)}
                for r in conn.execute(q)]


@router.get("/audit/verify", summary="Recompute the audit log's hash chain")
def audit_verify(p: auth.Principal = Depends(need("admin", "audit"))) -> dict[str, Any]:
    from datalab.policy import audit_checkpoints

    s = settings()
    problems = cat.Catalog(s.catalog_url).verify_audit()
    if (cp := audit_checkpoints.default_path(s)).is_file():
        problems += audit_checkpoints.verify(cp, s)
    return {"ok": not problems, "problems": problems}


@router.post("/audit/checkpoint", summary="Append a signed checkpoint of the audit head (outside the database)")
def audit_checkpoint(p: auth.Principal = Depends(need("admin", "audit"))) -> dict[str, Any]:
    from datalab.policy import audit_checkpoints

    return audit_checkpoints.checkpoint()


def _runner() -> runs.Runner:
    """The pipelines (datalab/runs.py); 501 on a server that has none installed."""
    try:
        return runs.runner()
    except runs.RunnerMissing as e:
        raise ApiError(501, f"this server has no pipelines installed (Dagster): {e}") from None


@router.post("/run", summary="Materialise pending deliveries through Dagster")
def run(contract: str | None = Query(None, max_length=300),
        p: auth.Principal = Depends(need("admin", "publish"))) -> list[dict[str, Any]]:
    try:
        runs = _runner().run_pending(contract)
    except DatalabError as e:
        raise ApiError(400, str(e)) from None
    return [r.__dict__ for r in runs]


@router.post("/datasets/{name}/publish", summary="Publish a new version if the inputs changed")
def publish(name: str = PathParam(..., max_length=128),
            p: auth.Principal = Depends(need("admin", "publish"))) -> dict[str, Any]:
    try:
        md = _runner().publish(name)
    except DatalabError as e:
        raise ApiError(400, str(e)) from None
    return {k: v for k, v in md.items() if isinstance(v, str | int | float | bool | None)}
