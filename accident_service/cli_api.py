"""``accident-service create-api-token``, ``revoke-api-token`` and ``list-api-tokens``.

Thin: parse options, open one unit of work, call ``api/tokens.py``. The new
token is the only thing written to stdout, so a script can capture it
(``TOKEN=$(accident-service create-api-token ...)``); notes go to stderr.
"""

from __future__ import annotations

import click

from accident_service.api import tokens
from accident_service.cli_runtime import command_runtime


@click.command("create-api-token")
@click.option("--name", required=True, help="Unique name, e.g. insurer-pingan (audit events show token:NAME).")
@click.option("--station", "station_code", help="The one station the token sees.")
@click.option("--all", "all_stations", is_flag=True, help="The token sees every station.")
@click.option("--scope", type=click.Choice(["read", "write"]), required=True,
              help="read: GET only; write: also the appointment actions.")
def create_api_token_command(name: str, station_code: str | None, all_stations: bool, scope: str) -> None:
    """Create an API token and print it (shown this once; only its hash is kept)."""
    if bool(station_code) == all_stations:
        raise click.UsageError("give exactly one of --station CODE and --all")
    runtime = command_runtime()
    with runtime.unit_of_work() as session:
        token = tokens.create_token(session, name=name, scope=scope, station_code=station_code,
                                    all_stations=all_stations, now=runtime.clock.now())
    click.echo(token)
    click.echo(f"created {scope} token {name.strip().lower()} for {station_code or 'all stations'}; "
               "it is shown only now", err=True)


@click.command("revoke-api-token")
@click.argument("name")
def revoke_api_token_command(name: str) -> None:
    """Revoke an API token: it is refused from the next request on."""
    runtime = command_runtime()
    with runtime.unit_of_work() as session:
        revoked_at = tokens.revoke_token(session, name, now=runtime.clock.now())
    click.echo(f"token {name} revoked at {revoked_at.isoformat()}")


@click.command("list-api-tokens")
def list_api_tokens_command() -> None:
    """List API tokens: scope, station, created, last used (to the minute), revoked."""
    runtime = command_runtime()
    with runtime.unit_of_work() as session:
        for token, code in tokens.list_tokens(session):
            used = token.last_used_at.isoformat(timespec="minutes") if token.last_used_at else "never"
            revoked = f"revoked {token.revoked_at.isoformat(timespec='minutes')}" if token.revoked_at else "active"
            click.echo(f"{token.name}\t{token.scope.value}\t{code or 'all'}\tcreated "
                       f"{token.created_at.isoformat(timespec='minutes')}\tlast used {used}\t{revoked}")


COMMANDS = (create_api_token_command, revoke_api_token_command, list_api_tokens_command)
