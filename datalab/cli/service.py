"""CLI commands of the lab service: serve, principals, tokens, audit export, and the
remote (HTTP) halves of push / pull / list / receipts.

Kept out of ``cli.py`` so that file only wires them in (``register``) and
asks ``remote()`` whether to go over HTTP.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from datalab.cli.table import print_table
from datalab.config import home_is_set, service_url, settings
from datalab.errors import DatalabError, UsageError

MAX_HEAD_BYTES = 32 << 10
token_app = typer.Typer(no_args_is_help=True, help="API tokens of the lab service (stored hashed).")
principal_app = typer.Typer(no_args_is_help=True, help="Principals: firms, consumer teams, admins.")


def remote() -> Any:
    """The HTTP client when DATALAB_URL and DATALAB_TOKEN are set, else None."""
    from datalab.client import from_env

    return from_env()


def require_lab() -> None:
    """Refuse to read a lab that does not exist, instead of silently creating an empty one.

    A mistyped ``DATALAB_HOME`` used to give an empty list or "no published
    version", which reads like data loss; a read command now says which
    directory it looked in.
    """
    s = settings()
    if not s.home.is_dir():
        from datalab.errors import NotFound

        e = NotFound(f"no lab at {s.home} (DATALAB_HOME{'' if home_is_set() else ' is unset: ./.datalab'})")
        e.hint = "check DATALAB_HOME (nothing was created), or create a lab with `datalab demo` or a push"
        raise e


def local_note(command: str, what: str | None = None) -> None:
    """Say plainly, on stderr, that ``command`` works on this machine even though DATALAB_URL is set."""
    url = service_url()
    if url:
        _, err, _ = _ui()
        what = what or f"the lab at {settings().home} (DATALAB_HOME)"
        err.print(f"note: `datalab {command}` is local-only: it uses {what}, not {url}",
                  highlight=False, markup=False, soft_wrap=True)


def local_only(command: str) -> None:
    """A local-only read: say so when DATALAB_URL is set, and refuse a lab that does not exist."""
    local_note(command)
    require_lab()


def _ui() -> tuple[Any, Any, Any]:
    from datalab.cli import errors as cli_errors

    return cli_errors.out, cli_errors.err, lambda e: cli_errors.fail(e, cli_errors.err)


def serve(
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8080),
    workers: int = typer.Option(1, help="uvicorn worker processes"),
    log_level: str = typer.Option("warning"),
) -> None:
    """Serve the lab over HTTP (FastAPI on uvicorn; OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    out, _, _ = _ui()
    s = settings()
    from datalab.policy import auth

    auth.list_principals(s)  # create the tables once, before the workers race to do it
    # Uploads a killed server was receiving: never landed, never visible; remove them.
    shutil.rmtree(s.staging / "http", ignore_errors=True)
    # And the temporary files of landings and curations a crash interrupted (parsed readings).
    from datalab.policy.retention import clean_interrupted

    if cleaned := clean_interrupted(s):
        out.print(f"removed {len(cleaned)} file(s) of interrupted writes")
    out.print(f"datalab service on http://{host}:{port} (DATALAB_HOME={s.home}, {workers} worker(s))")
    # h11 rather than httptools: it bounds the request head (MAX_HEAD_BYTES), so a client cannot
    # make the server buffer megabytes of headers; the answer to a longer head is a 400.
    from datalab.policy import audit_checkpoints

    audit_checkpoints.checkpoint(s=s)  # the head anchored outside the database at every start and stop
    try:
        # create_served_app: each worker process imports and loads what deliveries need as it starts (datalab.warm)
        uvicorn.run("datalab.service.app:create_served_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, server_header=False, timeout_keep_alive=30, http="h11",
                    h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    finally:
        audit_checkpoints.checkpoint(s=s)


@principal_app.command("add")
def principal_add(
    name: str,
    kind: str = typer.Option(..., help="firm, consumer or admin"),
    tenant: str = typer.Option(None, help="the firm's tenant (firms only)"),
    site: str = typer.Option(None, help="the site the team pulls from (consumers only)"),
    role: list[str] = typer.Option(None, help="roles (default: all of the kind's ordinary roles; a consumer may also get export-cleared and restricted)"),
) -> None:
    """Register a principal."""
    from datalab.policy import auth
    from datalab.store.pull import default_actor

    out, _, fail = _ui()
    try:
        p = auth.add_principal(name, kind, tenant, site, role or None, actor=default_actor())
    except (DatalabError, ValueError) as e:
        fail(e)
    out.print(f"principal {p.name}: {p.kind}, roles {', '.join(p.roles)}"
              f"{f', tenant {p.tenant}' if p.tenant else ''}{f', site {p.site}' if p.site else ''}", highlight=False)


def _principal_set_disabled(name: str, disabled: bool) -> None:
    from datalab.policy import auth
    from datalab.store.pull import default_actor

    out, _, fail = _ui()
    try:
        p = auth.set_disabled(name, disabled, actor=default_actor())
    except DatalabError as e:
        fail(e)
    out.print(f"principal {p.name}: {'disabled (its tokens are refused)' if p.disabled else 'enabled'}",
              highlight=False)


@principal_app.command("disable")
def principal_disable(name: str) -> None:
    """Disable a principal: every token of it is refused at once (reversible; audited)."""
    _principal_set_disabled(name, True)


@principal_app.command("enable")
def principal_enable(name: str) -> None:
    """Enable a disabled principal again (audited)."""
    _principal_set_disabled(name, False)


@principal_app.command("list")
def principal_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """All principals."""
    from datalab.policy import auth

    out, _, _ = _ui()
    local_only("principal list")
    ps = auth.list_principals()
    if as_json:
        out.print_json(json.dumps([p.to_dict() for p in ps]))
        return
    print_table(out, ("name", "kind", "roles", "tenant", "site", "created", "disabled"),
                ([p.name, p.kind, ",".join(p.roles), p.tenant or "-", p.site or "-", p.created_at[:19],
                  "yes" if p.disabled else "no"] for p in ps),
                ids=("name",))


@token_app.command("create")
def token_create(
    principal: str,
    days: int = typer.Option(90, help="lifetime in days (1-366)"),
    label: str = typer.Option("", help="what the token is for"),
) -> None:
    """Create a token; it is printed once and only its hash is kept."""
    from datalab.policy import auth
    from datalab.store.pull import default_actor

    _, err, fail = _ui()
    try:
        token, info = auth.create_token(principal, days, label, actor=default_actor())
    except DatalabError as e:
        fail(e)
    err.print(f"token {info.id} for {principal}, expires {info.expires_at[:19]}; it is shown only now:",
              highlight=False)
    print(token)


@token_app.command("list")
def token_list(principal: str = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Tokens (ids, owners, expiry, revocation; never the secret)."""
    from datalab.policy import auth

    out, _, _ = _ui()
    local_only("token list")
    ts = auth.list_tokens(principal)
    if as_json:
        out.print_json(json.dumps([t.to_dict() for t in ts]))
        return
    print_table(out, ("id", "principal", "label", "created", "expires", "revoked", "last used", "active"),
                ([x.id, x.principal, x.label, x.created_at[:19], x.expires_at[:19], (x.revoked_at or "-")[:19],
                  (x.last_used_at or "-")[:16], "yes" if x.active else "no"] for x in ts), ids=("id", "principal"))


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token at once."""
    from datalab.policy import auth
    from datalab.store.pull import default_actor

    out, _, fail = _ui()
    try:
        info = auth.revoke_token(token_id, actor=default_actor())
    except DatalabError as e:
        fail(e)
    out.print(f"token {info.id} of {info.principal} revoked at {info.revoked_at}", highlight=False)


def audit_export(
    to: Path = typer.Option(..., "--to", help="JSON Lines file to write"),
    since: int = typer.Option(0, help="only entries after this sequence number"),
) -> None:
    """Export the audit log (with hashes) as JSON Lines for an auditor."""
    from datalab.policy.audit_export import export

    out, _, _ = _ui()
    local_only("audit export")
    summary = export(to, since)
    out.print(f"{summary['entries']} entries ({summary['first_seq']}..{summary['last_seq']}) -> {summary['path']}; "
              f"last hash {summary['last_hash']}", highlight=False)


def register(app: typer.Typer, audit_app: typer.Typer) -> None:
    """Wire the service commands into the main CLI."""
    app.command("serve")(serve)
    app.add_typer(token_app, name="token")
    app.add_typer(principal_app, name="principal")
    audit_app.command("export")(audit_export)


# -- remote halves of the everyday commands ------------------------------------


def remote_push(client: Any, contract: str, files: list[Path], progress: Any, correction: bool = False) -> Any:
    """Push over HTTP; ``contract`` may be an id, tenant/product, product, or a contract file."""
    from datalab.contracts import contract as contracts_mod

    ref = contract
    if Path(contract).is_file():
        ref = contracts_mod.load(Path(contract)).id
    ref = ref.split("/")[-1] if "/" in ref and not ref.startswith("urn:") else ref
    return client.push(ref, files, progress=progress, correction=correction, on_wait=_WaitNotice())


class _WaitNotice:
    """Tells the user, on stderr, that the lab asked the push to wait (at the first wait, then every 30 s)."""

    def __init__(self) -> None:
        self.waited, self.told = 0, -1

    def __call__(self, message: str, seconds: int) -> None:
        if self.told < 0 or self.waited - self.told >= 30:
            typer.echo(f"the lab asks this push to wait ({self.waited} s so far): {message}", err=True)
            self.told = self.waited
        self.waited += seconds


def remote_list(client: Any, purpose: str | None) -> list[dict[str, Any]]:
    if not purpose:
        raise UsageError("over HTTP, listing needs --purpose (only versions it may reach are shown)")
    return [{"dataset": d["dataset"], "versions": [v["version"] for v in d["versions"]], "latest": d["latest"],
             "status": {v["version"]: v["status"] for v in d["versions"]}} for d in client.datasets(purpose)]


def remote_show(client: Any, ref: str, purpose: str | None, as_json: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) with ``--json``, else (None, card text), over HTTP for ``purpose``."""
    if not purpose:
        raise UsageError("over HTTP, show needs --purpose P (a version is shown only for a purpose that may reach it)")
    name, _, version = ref.partition("@")
    base = f"/v1/datasets/{name}/versions/{version or 'latest'}"
    if as_json:
        return client.get_json(f"{base}/manifest", purpose=purpose), None
    r = client._check(client.http.get(f"{base}/card", params={"purpose": purpose}))
    return None, r.text


def remote_audit(client: Any, action: str | None) -> list[dict[str, Any]]:
    """Every audit entry of the remote lab (an admin token), page by page."""
    got: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get_json("/v1/admin/audit", after=after, limit=5000, action=action)
        got += page
        if len(page) < 5000:
            return got
        after = page[-1]["seq"]
