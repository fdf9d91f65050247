"""Principals and API tokens of the lab service.

A *principal* is who acts: a member firm (kind ``firm``, bound to one
tenant), a consumer team (kind ``consumer``, bound to the site its cluster
runs in, which residency is checked against) or a lab admin. Roles narrow
what a principal of a kind may do (a firm's read-only monitoring account has
``receipts`` but not ``push``).

Tokens are ``dl_<id>_<secret>``: the id (12 hex digits) finds the row, the
secret (32 random bytes, url-safe base64) proves possession. Only the
SHA-256 of the secret is stored: with 256 bits of entropy a fast hash is as
good as a slow one, and a stolen catalog gives no usable token. A token is
shown once, expires, and can be revoked; every create and revoke is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, safe_segment, settings
from datalab.errors import DatalabError, NotFound
from datalab.store import catalog as cat

KINDS = ("firm", "consumer", "admin")
# What each kind may be given, and what it gets by default.
ROLES: dict[str, tuple[str, ...]] = {
    "firm": ("push", "receipts"),
    "consumer": ("pull",),
    "admin": ("principals", "tokens", "audit", "publish"),
}
# Roles a kind may be given but does not get by default: clearances of a
# consumer team, which the lab grants per team (never server-wide).
OPTIONAL_ROLES: dict[str, tuple[str, ...]] = {"consumer": ("export-cleared", "restricted")}
TOKEN_RE = re.compile(r"^dl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
DEFAULT_TTL_DAYS = 90
MAX_TTL_DAYS = 366
LAST_USED_RESOLUTION_S = 60  # tokens.last_used_at is written at most this often per token

principals = sa.Table(
    "dl_principals",
    cat.metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("roles", sa.Text, nullable=False),
    sa.Column("tenant", sa.String(64)),
    sa.Column("site", sa.String(64)),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)

tokens = sa.Table(
    "dl_tokens",
    cat.metadata,
    sa.Column("id", sa.String(12), primary_key=True),
    sa.Column("principal", sa.String(64), sa.ForeignKey("dl_principals.name"), nullable=False, index=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("expires_at", sa.String(40), nullable=False),
    sa.Column("revoked_at", sa.String(40)),
    sa.Column("last_used_at", sa.String(40)),
)

# One row per (principal, Idempotency-Key): what the key was first used for,
# so a replay with the same bytes gets the same receipt and a replay with
# other bytes is refused instead of silently landing a second delivery.
idempotency = sa.Table(
    "dl_idempotency",
    cat.metadata,
    sa.Column("principal", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("delivery_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)


class AuthError(DatalabError):
    """A token that is missing, malformed, unknown, expired or revoked."""


@dataclass
class Principal:
    name: str
    kind: str
    roles: list[str]
    tenant: str | None = None
    site: str | None = None
    created_at: str = ""
    disabled: bool = False

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return f"{self.kind}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenInfo:
    id: str
    principal: str
    label: str
    created_at: str
    expires_at: str
    revoked_at: str | None = None
    last_used_at: str | None = None
    active: bool = field(default=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_READY: set[str] = set()


def _catalog(s: Settings | None) -> cat.Catalog:
    """The catalog, with this module's tables created (the catalog may predate them)."""
    c = cat.Catalog((s or settings()).catalog_url)
    if c.url not in _READY:
        cat.create_tables(cat.metadata, c.engine, tables=[principals, tokens, idempotency])
        _READY.add(c.url)
    return c


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _row_principal(r: Any) -> Principal:
    return Principal(r.name, r.kind, json.loads(r.roles), r.tenant, r.site, r.created_at, bool(r.disabled))


def add_principal(
    name: str, kind: str, tenant: str | None = None, site: str | None = None,
    roles: list[str] | None = None, actor: str = "cli", s: Settings | None = None,
) -> Principal:
    """Register a principal; checks that kind, roles, tenant and site fit together."""
    s = s or settings()
    safe_segment(name, "principal name")
    if kind not in KINDS:
        raise DatalabError(f"principal kind {kind!r}: use one of {', '.join(KINDS)}")
    roles = sorted(set(roles or ROLES[kind]))
    allowed = ROLES[kind] + OPTIONAL_ROLES.get(kind, ())
    bad = [r for r in roles if r not in allowed]
    if bad:
        raise DatalabError(f"roles {bad} are not available to a {kind} (allowed: {', '.join(allowed)})")
    if kind == "firm":
        if not tenant:
            raise DatalabError("a firm principal needs --tenant (the firm its contracts name)")
        safe_segment(tenant, "tenant")
    elif tenant:
        raise DatalabError(f"a {kind} principal has no tenant")
    if kind == "consumer":
        from datalab.contracts.datasets import load_sites

        sites = load_sites(s.contracts_dir)
        if not site or site not in sites:
            raise DatalabError(f"a consumer principal needs --site, one of {', '.join(sorted(sites))} "
                               "(residency is checked against the site its cluster runs in)")
    elif site:
        raise DatalabError(f"a {kind} principal has no site")
    p = Principal(name, kind, roles, tenant, site, cat.now_iso())
    catalog = _catalog(s)
    try:
        with catalog.begin() as conn:
            conn.execute(principals.insert().values(
                name=name, kind=kind, roles=json.dumps(roles), tenant=tenant, site=site,
                created_at=p.created_at, disabled=False))
            catalog.audit(actor, "principal", name, "created",
                          {"kind": kind, "roles": roles, "tenant": tenant, "site": site}, conn=conn)
    except sa.exc.IntegrityError:
        raise DatalabError(f"principal {name!r} exists already") from None
    return p


def get_principal(name: str, s: Settings | None = None) -> Principal:
    with _catalog(s).begin() as conn:
        r = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
    if r is None:
        raise NotFound(f"no principal {name!r}")
    return _row_principal(r)


def list_principals(s: Settings | None = None) -> list[Principal]:
    with _catalog(s).begin() as conn:
        return [_row_principal(r) for r in conn.execute(sa.select(principals).order_by(principals.c.name))]


def create_token(
    principal: str, ttl_days: int = DEFAULT_TTL_DAYS, label: str = "", actor: str = "cli",
    s: Settings | None = None,
) -> tuple[str, TokenInfo]:
    """A new token for ``principal``: (the token, shown only now; its stored record)."""
    if not 0 < ttl_days <= MAX_TTL_DAYS:
        raise DatalabError(f"token lifetime {ttl_days} days: use 1 to {MAX_TTL_DAYS}")
    s = s or settings()
    p = get_principal(principal, s)
    if p.disabled:
        raise DatalabError(f"principal {principal!r} is disabled")
    tid, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    info = TokenInfo(tid, principal, label[:200], now.isoformat(timespec="microseconds"),
                     (now + timedelta(days=ttl_days)).isoformat(timespec="microseconds"))
    catalog = _catalog(s)
    with catalog.begin() as conn:
        conn.execute(tokens.insert().values(
            id=tid, principal=principal, secret_sha256=_hash(secret), label=info.label,
            created_at=info.created_at, expires_at=info.expires_at))
        catalog.audit(actor, "token", tid, "created",
                      {"principal": principal, "expires_at": info.expires_at, "label": info.label}, conn=conn)
    return f"dl_{tid}_{secret}", info


def _token_info(r: Any, now: str) -> TokenInfo:
    return TokenInfo(r.id, r.principal, r.label, r.created_at, r.expires_at, r.revoked_at, r.last_used_at,
                     active=r.revoked_at is None and r.expires_at > now)


def list_tokens(principal: str | None = None, s: Settings | None = None) -> list[TokenInfo]:
    q = sa.select(tokens).order_by(tokens.c.created_at)
    if principal:
        q = q.where(tokens.c.principal == principal)
    now = cat.now_iso()
    with _catalog(s).begin() as conn:
        return [_token_info(r, now) for r in conn.execute(q)]


def revoke_token(token_id: str, actor: str = "cli", s: Settings | None = None) -> TokenInfo:
    """Revoke a token at once (idempotent: revoking twice keeps the first time)."""
    catalog = _catalog(s)
    with catalog.begin() as conn:
        r = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
        if r is None:
            raise NotFound(f"no token {token_id!r}")
        if r.revoked_at is None:
            conn.execute(tokens.update().where(tokens.c.id == token_id).values(revoked_at=cat.now_iso()))
            catalog.audit(actor, "token", token_id, "revoked", {"principal": r.principal}, conn=conn)
        r = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one()
    return _token_info(r, cat.now_iso())


def authenticate(token: str, s: Settings | None = None) -> Principal:
    """The principal a bearer token stands for; raises AuthError (never says which part was wrong)."""
    m = TOKEN_RE.match(token or "")
    if not m:
        raise AuthError("malformed token (expected dl_<id>_<secret>)")
    tid, secret = m.groups()
    now = cat.now_iso()
    catalog = _catalog(s)
    with catalog.begin() as conn:
        r = conn.execute(
            sa.select(tokens, principals.c.kind, principals.c.roles, principals.c.tenant, principals.c.site,
                      principals.c.created_at.label("p_created"), principals.c.disabled)
            .join(principals, principals.c.name == tokens.c.principal)
            .where(tokens.c.id == tid)
        ).first()
    # Compare against a dummy hash when the id is unknown, so timing does not
    # tell a guessed id from a wrong secret.
    ok = hmac.compare_digest(_hash(secret), r.secret_sha256 if r is not None else "0" * 64)
    if r is None or not ok:
        raise AuthError("unknown token")
    if r.revoked_at is not None:
        raise AuthError(f"token {tid} was revoked")
    if r.expires_at <= now:
        raise AuthError(f"token {tid} expired at {r.expires_at}")
    if r.disabled:
        raise AuthError(f"principal {r.principal} is disabled")
    # When the token was last used, to the minute: one write per token a minute, not one per request
    # (every write takes the catalog's write lock, which the pushes need).
    stale = (datetime.now(UTC) - timedelta(seconds=LAST_USED_RESOLUTION_S)).isoformat(timespec="microseconds")
    if r.last_used_at is None or r.last_used_at < stale:
        with catalog.begin() as conn:
            conn.execute(tokens.update().where(tokens.c.id == tid).values(last_used_at=now))
    return Principal(r.principal, r.kind, json.loads(r.roles), r.tenant, r.site, r.p_created, False)


def set_disabled(name: str, disabled: bool, actor: str = "cli", s: Settings | None = None) -> Principal:
    """Disable a principal (every token of it refused at once, none can be created) or enable it again.

    Reversible, unlike revoking tokens: for a firm whose contract is paused
    or a team that left for a while. Audited; idempotent.
    """
    catalog = _catalog(s)
    with catalog.begin() as conn:
        r = conn.execute(sa.select(principals).where(principals.c.name == name)).first()
        if r is None:
            raise NotFound(f"no principal {name!r}")
        if bool(r.disabled) != disabled:
            conn.execute(principals.update().where(principals.c.name == name).values(disabled=disabled))
            catalog.audit(actor, "principal", name, "disabled" if disabled else "enabled", {}, conn=conn)
        r = conn.execute(sa.select(principals).where(principals.c.name == name)).one()
    return _row_principal(r)


def token_id(token: str) -> str | None:
    """The id part of a token (safe to log), if it has one."""
    m = TOKEN_RE.match(token or "")
    return m.group(1) if m else None


def clearance_env(p: Principal) -> dict[str, str]:
    """The clearance a consumer principal holds, in the form ``clearance.check_clearance`` reads.

    Over HTTP the clearance is the principal's (roles ``restricted`` and
    ``export-cleared``), never the server process's environment: one cleared
    team must not clear every consumer of the lab.
    """
    return {"DATALAB_CLEARANCE": "restricted" if "restricted" in p.roles else "confidential",
            "DATALAB_EXPORT_CLEARED": "1" if "export-cleared" in p.roles else "", "principal": p.name}
