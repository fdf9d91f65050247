"""Federation commands (issue 18): ``site show``, ``peer add/list/remove``, ``catalog --federated``,
``negotiate``, ``transfer``, ``replicate`` (both in one), ``query``, ``outbox``.

Kept out of cli.py so other branches editing the CLI merge cleanly;
``register(app)`` is the one line cli.py calls.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from datalab.errors import DatalabError

out = Console()
err = Console(stderr=True)
site_app = typer.Typer(no_args_is_help=True, help="This lab instance as a site of the federation.")
peer_app = typer.Typer(no_args_is_help=True, help="Peer sites this site trusts (operator-registered keys).")


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=False)
    raise typer.Exit(1)


@site_app.command("show")
def site_show(as_json: bool = typer.Option(False, "--json")) -> None:
    """Name, base URL and public key of this site (give the key to peers' operators)."""
    from datalab.federation.identity import public_key_b64, site_name, site_url

    try:
        info = {"name": site_name(), "url": site_url(), "public_key": public_key_b64()}
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(info))
    else:
        for k, v in info.items():
            out.print(f"{k}: {v or '-'}", highlight=False, markup=False)


@peer_app.command("add")
def peer_add(name: str = typer.Argument(..., help="the peer's site name (sites.yaml)"),
             url: str = typer.Argument(..., help="the peer's base URL, e.g. http://127.0.0.1:8102"),
             key: str = typer.Option(..., "--key", help="the peer's public key (`datalab site show` there)")) -> None:
    """Trust a peer site: requests signed by this key are accepted as coming from NAME."""
    from datalab.federation.identity import add_peer

    try:
        p = add_peer(name, url, key)
    except (DatalabError, ValueError) as e:
        _fail(e)
    out.print(f"peer {p.name} at {p.url} registered", highlight=False, markup=False)


@peer_app.command("list")
def peer_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered peers."""
    from datalab.federation.identity import list_peers

    peers = list_peers()
    if as_json:
        out.print_json(json.dumps([p.__dict__ for p in peers]))
        return
    t = Table("peer", "url", "public key")
    for p in peers:
        t.add_row(p.name, p.url, p.public_key)
    out.print(t)


@peer_app.command("remove")
def peer_remove(name: str) -> None:
    """Stop trusting a peer: its tokens are refused from now on."""
    from datalab.federation.identity import remove_peer

    try:
        remove_peer(name)
    except DatalabError as e:
        _fail(e)
    out.print(f"peer {name} removed", highlight=False, markup=False)


def catalog_cmd(federated: bool = typer.Option(False, "--federated", help="ask every peer too (DSP catalog)"),
                purpose: str = typer.Option(None, help="only offers this purpose may use"),
                timeout: float = typer.Option(5.0, help="seconds to wait for each peer"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """This site's DSP catalog, merged with every peer's with --federated: site, dataset, version, policy."""
    from datalab.federation.client import federated_catalog
    try:
        rows, failed = federated_catalog(purpose, timeout, peers=federated)
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps({"datasets": rows, "unavailable": failed}))
        return
    t = Table("site", "dataset", "version", "rows", "policy")
    for r in rows:
        t.add_row(r["site"], r["dataset"], r["version"], f"{r['rows']:,}", r["policy"])
    out.print(t)
    for why in failed.values():
        err.print(f"[yellow]unavailable:[/] {why}", highlight=False)


def negotiate_cmd(site: str = typer.Argument(..., help="the provider site (a registered peer)"),
                  ref: str = typer.Argument(..., help="DATASET@VERSION in that site's catalog"),
                  purpose: str = typer.Option(..., "--purpose", help="the declared purpose of use"),
                  timeout: float = typer.Option(30.0, help="seconds to wait for the provider's answer"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Negotiate a contract (DSP) for a peer's dataset version: an agreement, or the rule that refuses it."""
    from datalab.federation.client import negotiate

    try:
        n = negotiate(site, ref, purpose, timeout)
    except DatalabError as e:
        _fail(e)
    info = {"negotiation": n.consumer_pid, "provider_pid": n.provider_pid, "state": n.state,
            "agreement": (n.agreement or {}).get("@id"), "rule": n.rule, "reason": n.reason}
    if as_json:
        out.print_json(json.dumps(info))
    elif n.state == "FINALIZED":
        out.print(f"agreement {info['agreement']}: {ref} from {site} for {purpose}", highlight=False, markup=False)
    else:
        err.print(f"{site}: {n.reason}", highlight=False, markup=False)
    if n.state != "FINALIZED":
        raise typer.Exit(1)


def negotiations_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """This site's negotiations, as provider and as consumer."""
    from datalab.federation import negotiation as neg

    rows = [{"id": n.consumer_pid, "role": n.role, "peer": n.peer, "dataset": f"{n.dataset}@{n.version}",
             "purpose": n.purpose, "state": n.state, "agreement": (n.agreement or {}).get("@id"), "reason": n.reason}
            for n in neg.list_all()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("negotiation", "role", "peer", "dataset", "purpose", "state", "agreement / reason")
    for r in rows:
        t.add_row(r["id"], r["role"], r["peer"], r["dataset"], r["purpose"], r["state"], r["agreement"] or r["reason"] or "")
    out.print(t)


def transfer_cmd(agreement: str = typer.Argument(..., help="the agreement id (`datalab negotiations`)"),
                 timeout: float = typer.Option(30.0, help="seconds to wait for the data address")) -> None:
    """Transfer an agreed version from its site (DSP HTTP pull) and register it here as a replica."""
    from datalab.federation.client import transfer

    try:
        m = transfer(agreement, timeout)
    except DatalabError as e:
        _fail(e)
    rep = m.replica
    out.print(f"replica {m.dataset}@{m.version} from {rep['site']}: {len(m.files)} files verified, "
              f"{m.rows:,} rows; usable for {rep['purpose']} only", highlight=False, markup=False)


def replicate_cmd(site: str = typer.Argument(..., help="the provider site (a registered peer)"),
                  ref: str = typer.Argument(..., help="DATASET@VERSION in that site's catalog"),
                  purpose: str = typer.Option(..., "--purpose", help="the declared purpose; the replica is usable for it only"),
                  timeout: float = typer.Option(30.0, "--timeout",
                                                help="seconds to wait for each answer of the provider (agreement, data address)"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Replicate a peer's version to this site: negotiate (DSP), transfer when agreed, register the replica.

    Run at the consuming site. A refusal names the provider's rule; the
    replica is usable here only for PURPOSE.
    """
    from datalab.cli.errors import fail
    from datalab.cli.service import local_only
    from datalab.config import settings
    from datalab.federation.client import replicate

    try:
        local_only("replicate")
        m = replicate(site, ref, purpose, timeout)
    except DatalabError as e:
        fail(e, err)
    rep = m.replica
    from datalab.store.storage import store, version_key

    files, key = store(settings()), version_key(m.dataset, m.version)
    where = files.local(key) if files.is_local else files.uri(key)
    if as_json:
        out.print_json(json.dumps({"dataset": m.dataset, "version": m.version, "site": rep["site"],
                                   "agreement": rep["agreement"], "purpose": rep["purpose"], "path": str(where),
                                   "files": len(m.files), "rows": m.rows}))
        return
    out.print(f"replica {m.dataset}@{m.version} from {rep['site']} registered in this site's catalog at {where} "
              f"({len(m.files)} files verified, {m.rows:,} rows, agreement {rep['agreement']}); "
              f"usable for {rep['purpose']} only", highlight=False, markup=False, soft_wrap=True)


def query_cmd(site: str = typer.Argument(..., help="the site holding the data (a registered peer)"),
              ref: str = typer.Argument(..., help="DATASET@VERSION"),
              purpose: str = typer.Option(..., "--purpose"),
              group_by: str = typer.Option("", "--group-by", help="columns; a datetime one as COL:1h (ms, s, m, h, d)"),
              agg: str = typer.Option("count()", "--agg", help='declared aggregations, e.g. "mean(value),count()"'),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Compute-to-data: a declared aggregation run where the data lives; groups under k rows suppressed."""
    from datalab.federation.client import query

    try:
        res = query(site, ref, purpose, group_by, agg)
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(res))
        return
    cols = [*res["query"]["group_by"], *res["query"]["aggs"]]
    t = Table(*cols, title=f"{ref} at {site} (k={res['k']}, {res['rows_scanned']:,} rows)")
    for r in res["groups"]:
        t.add_row(*[f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    out.print(t)
    if res["suppressed_groups"]:
        err.print(f"{res['suppressed_groups']} group(s) suppressed: {res['why_suppressed']}", highlight=False, markup=False)


def outbox_cmd(deliver: bool = typer.Option(False, "--deliver", help="scan for withdrawals and send due events now"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Withdrawal events to peers holding replicas: pending (with retries) and confirmed."""
    from datalab.federation import events

    try:
        if deliver:
            events.scan()
            events.deliver()
        rows = events.outbox()
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("event", "peer", "subject", "state", "attempts", "last error")
    for r in rows:
        t.add_row(r["id"], r["peer"], r["subject"], r["state"], str(r["attempts"]), r["last_error"] or "")
    out.print(t)


def register(app: typer.Typer) -> None:
    """Add the federation commands to the ``datalab`` app."""
    app.add_typer(site_app, name="site")
    app.add_typer(peer_app, name="peer")
    app.command("catalog")(catalog_cmd)
    app.command("negotiate")(negotiate_cmd)
    app.command("negotiations")(negotiations_cmd)
    app.command("transfer")(transfer_cmd)
    app.command("replicate")(replicate_cmd)
    app.command("query")(query_cmd)
    app.command("outbox")(outbox_cmd)
