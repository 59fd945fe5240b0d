"""Commands `kvsnap config init` and `kvsnap config show`."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import typer

from kvsnap.cli.app import app
from kvsnap.cli.options import AccountOption, ConfigOption, JsonOption, RepoOption
from kvsnap.cli.output import print_json, stdout
from kvsnap.config import DEFAULT_CONFIG_NAME, load_settings
from kvsnap.effective import describe
from kvsnap.errors import ConfigError
from kvsnap.policy import load_policy
from kvsnap.starter import starter_file
from kvsnap.storage import parse_location

config_app = typer.Typer(
    name="config",
    help="Write a starter kvsnap.toml, or show the settings in effect.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(config_app, name="config")


@config_app.command("init")
def init_command(
    path: Path = typer.Argument(
        Path(DEFAULT_CONFIG_NAME),
        help="File to write; - prints the file to stdout instead.",
        dir_okay=False,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    repo: str | None = typer.Option(
        None, "--repo", "-r", help="Repository URL to write into the file."
    ),
    account: str | None = typer.Option(
        None, "--account", help="Cloudflare account id to write into the file."
    ),
    namespaces: list[str] = typer.Option(
        None, "--namespace", "-n", help="Namespace to back up (repeat for several)."
    ),
    all_namespaces: bool = typer.Option(
        False, "--all", help="Write all = true: back up every namespace."
    ),
) -> None:
    """Write a commented starter kvsnap.toml with every setting and its default.

    Exit codes: 0 written, 10 the file exists (pass --force) or a value is
    invalid.
    """
    if repo is not None:
        parse_location(repo)
    text = starter_file(
        repository=repo,
        account_id=account,
        namespaces=tuple(namespaces or ()),
        all_namespaces=all_namespaces,
    )
    _check_loads(text)
    if str(path) == "-":
        sys.stdout.write(text)
        return
    _write(path, text, force=force)
    stdout.print(f"wrote {path}", markup=False, highlight=False)


def _check_loads(text: str) -> None:
    """Load the rendered file as kvsnap would, so a bad --account fails here."""
    with tempfile.TemporaryDirectory(prefix="kvsnap-config-") as folder:
        candidate = Path(folder) / DEFAULT_CONFIG_NAME
        candidate.write_text(text, encoding="utf-8")
        load_settings(config_file=candidate, env={})
        load_policy(candidate, env={})


def _write(path: Path, text: str, *, force: bool) -> None:
    """Create `path`, or replace it atomically when `force` is set."""
    exists_error = ConfigError(
        f"{path} already exists; it was left unchanged",
        hint="pass --force to overwrite it, or give another file name",
    )
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder: give a file name such as {path}/kvsnap.toml"
        )
    if path.exists() and not force:
        raise exists_error
    try:
        if not force:
            with path.open("x", encoding="utf-8") as f:
                f.write(text)
            return
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    except FileExistsError as exc:  # created by someone else since the check
        raise exists_error from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


@config_app.command("show")
def show_command(
    repo: str | None = RepoOption,
    account: str | None = AccountOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Show the settings and policy in effect and where each comes from.

    The API token and webhook URLs are shown as ***, and storage credentials
    by variable name only. Exit codes: 0 shown, 10 a setting is invalid.
    """
    settings = load_settings(config_file=config, repository=repo, account_id=account)
    policy = load_policy(settings.config_file)
    given = {"repository": ("--repo", repo), "account_id": ("--account", account)}
    flags = {name: flag for name, (flag, value) in given.items() if value is not None}
    effective = describe(settings, policy, flags=flags, explicit_config=config)
    if as_json:
        print_json(effective.to_dict())
    else:
        sys.stdout.write(effective.render_text())
