"""Site identity, registered peers and signed site-to-site tokens.

Why Ed25519 tokens and not TLS client certificates: sites on one machine
(tests, the demo) talk plain HTTP on loopback, and a token signed by the
calling site's key names issuer, audience, expiry and a nonce, so the
receiver can refuse forged, misdirected, stale and replayed requests the same
way whatever the transport. Peers are trusted only because an operator
registered their public key (``datalab peer add``); there is no central server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from datalab.config import Settings, safe_segment, settings
from datalab.errors import DatalabError, NotFound

TOKEN_PREFIX = "dlsite."
TOKEN_TTL_S = 300  # "expiry in minutes": long enough for a slow peer, short enough that a leaked token dies soon
CLOCK_SKEW_S = 30


class TokenRefused(DatalabError):
    """A site token that is missing, unknown, forged, expired, misdirected or replayed."""


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def site_name(s: Settings | None = None) -> str:
    """The site this instance is (``DATALAB_SITE``); federation needs one."""
    s = s or settings()
    if not s.site:
        raise DatalabError("this lab instance is no site: set DATALAB_SITE to its name in sites.yaml")
    return safe_segment(s.site, "site name")


def site_url(s: Settings | None = None) -> str:
    """The base URL peers reach this site at: ``DATALAB_SITE_URL``, else sites.yaml's ``url``."""
    s = s or settings()
    if s.site_url:
        return s.site_url
    from datalab.contracts.datasets import load_sites

    site = load_sites(s.contracts_dir).get(site_name(s))
    return (getattr(site, "url", "") or "").rstrip("/")


def _key_path(s: Settings) -> Path:
    return s.secrets / "site_ed25519.pem"


def private_key(s: Settings | None = None) -> Ed25519PrivateKey:
    """The site's private key, created 0600 on first use (never logged, never sent)."""
    s = s or settings()
    p = _key_path(s)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(p.parent, 0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, p)  # first creator wins when two processes start at once
        tmp.unlink(missing_ok=True)
    key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def public_key_b64(s: Settings | None = None) -> str:
    """The site's public key as unpadded base64url of the 32 raw bytes (what ``peer add --key`` takes)."""
    raw = private_key(s).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def _load_public(b64: str) -> Ed25519PublicKey:
    try:
        raw = _unb64(b64.strip())
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except Exception:
        raise DatalabError(f"not an Ed25519 public key (43 base64url characters): {b64[:60]!r}") from None


# -- federation.db ------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (name TEXT PRIMARY KEY, url TEXT NOT NULL, public_key TEXT NOT NULL,
                                  added TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_nonces (issuer TEXT NOT NULL, nonce TEXT NOT NULL, exp INTEGER NOT NULL,
                                        PRIMARY KEY (issuer, nonce));
"""


def db(s: Settings | None = None) -> sqlite3.Connection:
    """The site's federation database (peers, replay cache, negotiations...).

    SQLite in WAL mode beside the catalog: several service workers and the CLI
    share it; ``BEGIN IMMEDIATE`` in writers keeps the replay check atomic.
    """
    s = s or settings()
    s.home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(s.home / "federation.db", timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    return conn


@dataclass(frozen=True)
class Peer:
    name: str
    url: str
    public_key: str


def add_peer(name: str, url: str, key: str, s: Settings | None = None) -> Peer:
    """Register (or re-key) a peer site; its key is checked to be an Ed25519 key."""
    safe_segment(name, "peer name")
    if not url.startswith(("http://", "https://")):
        raise DatalabError(f"peer {name}: URL must start with http:// or https://, got {url!r}")
    _load_public(key)
    with closing(db(s)) as c:
        c.execute("INSERT INTO peers VALUES (?,?,?,datetime('now')) ON CONFLICT(name) DO UPDATE SET "
                  "url=excluded.url, public_key=excluded.public_key", (name, url.rstrip("/"), key.strip()))
    return Peer(name, url.rstrip("/"), key.strip())


def list_peers(s: Settings | None = None) -> list[Peer]:
    with closing(db(s)) as c:
        return [Peer(*r) for r in c.execute("SELECT name, url, public_key FROM peers ORDER BY name")]


def get_peer(name: str, s: Settings | None = None) -> Peer:
    for p in list_peers(s):
        if p.name == name:
            return p
    e = NotFound(f"no peer {name!r} (registered: {', '.join(p.name for p in list_peers(s)) or 'none'})")
    e.hint = "register it with `datalab peer add NAME URL --key KEY` (its key: `datalab site show` there)"
    raise e


def remove_peer(name: str, s: Settings | None = None) -> None:
    with closing(db(s)) as c:
        if c.execute("DELETE FROM peers WHERE name=?", (name,)).rowcount == 0:
            raise NotFound(f"no peer {name!r}")


# -- tokens -------------------------------------------------------------------


def issue_token(audience: str, s: Settings | None = None, ttl_s: int = TOKEN_TTL_S,
                now: float | None = None) -> str:
    """A token for one request from this site to ``audience``: ``dlsite.<claims>.<signature>``."""
    s = s or settings()
    now = time.time() if now is None else now
    claims = {"iss": site_name(s), "aud": audience, "iat": int(now), "exp": int(now) + ttl_s,
              "nonce": secrets.token_urlsafe(16)}
    body = _b64(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    sig = private_key(s).sign(body.encode())
    return f"{TOKEN_PREFIX}{body}.{_b64(sig)}"


def verify_token(token: str | None, s: Settings | None = None, now: float | None = None) -> dict[str, Any]:
    """The claims of a valid token from a registered peer; raise TokenRefused with the reason otherwise.

    The nonce is recorded only after every other check passed, so a forged
    token cannot burn a real one's nonce.
    """
    s = s or settings()
    now = time.time() if now is None else now
    if not token:
        raise TokenRefused("no site token (Authorization header)")
    token = token.removeprefix("Bearer ").strip()
    if not token.startswith(TOKEN_PREFIX) or token.count(".") != 2:
        raise TokenRefused("malformed site token")
    body, sig = token[len(TOKEN_PREFIX):].split(".")
    try:
        claims = json.loads(_unb64(body))
        iss, aud, exp, nonce = claims["iss"], claims["aud"], int(claims["exp"]), str(claims["nonce"])
    except Exception:
        raise TokenRefused("malformed site token claims") from None
    try:
        peer = get_peer(str(iss), s)
    except NotFound:
        raise TokenRefused(f"unknown site {str(iss)[:60]!r}: not a registered peer") from None
    try:
        _load_public(peer.public_key).verify(_unb64(sig), body.encode())
    except (InvalidSignature, ValueError, DatalabError):
        raise TokenRefused(f"forged site token: signature does not match the registered key of {iss}") from None
    if aud != site_name(s):
        raise TokenRefused(f"site token for {str(aud)[:60]!r}, not for this site ({site_name(s)})")
    if exp < now - CLOCK_SKEW_S:
        raise TokenRefused(f"expired site token (expired {int(now - exp)} s ago)")
    if exp > now + TOKEN_TTL_S + CLOCK_SKEW_S:
        raise TokenRefused("site token valid for longer than this site accepts")
    with closing(db(s)) as c:
        c.execute("BEGIN IMMEDIATE")
        c.execute("DELETE FROM seen_nonces WHERE exp < ?", (int(now) - CLOCK_SKEW_S,))
        try:
            c.execute("INSERT INTO seen_nonces VALUES (?,?,?)", (iss, nonce, exp))
        except sqlite3.IntegrityError:
            c.execute("ROLLBACK")
            raise TokenRefused(f"replayed site token (nonce already used by {iss})") from None
        c.execute("COMMIT")
    return claims
