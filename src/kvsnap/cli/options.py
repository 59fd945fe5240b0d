"""Options shared by several commands, declared once."""

from __future__ import annotations

import typer

from kvsnap.config import ENV_REPOSITORY

RepoOption = typer.Option(
    None,
    "--repo",
    "-r",
    help=f"Repository: a folder, file://, s3://BUCKET/PREFIX or r2://BUCKET/PREFIX "
    f"[env: {ENV_REPOSITORY}].",
    show_default=False,
)
ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="Settings file [default: ./kvsnap.toml if present; env: KVSNAP_CONFIG].",
    show_default=False,
    dir_okay=False,
)
AccountOption = typer.Option(
    None,
    "--account",
    help="Cloudflare account id [env: CLOUDFLARE_ACCOUNT_ID].",
    show_default=False,
)
JsonOption = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
ConcurrencyOption = typer.Option(
    None,
    "--concurrency",
    help="Requests in flight at once [default: 8].",
    show_default=False,
)
RateLimitOption = typer.Option(
    None,
    "--rate-limit",
    help="API budget as REQUESTS/SECONDS [default: 1200/300, Cloudflare's limit].",
    show_default=False,
)
MaxAttemptsOption = typer.Option(
    None,
    "--max-attempts",
    help="Tries per request before the run fails [default: 8].",
    show_default=False,
)
LockWaitOption = typer.Option(
    0.0,
    "--lock-wait",
    min=0.0,
    help="Seconds to wait for a conflicting repository lock before exiting with 23.",
)
