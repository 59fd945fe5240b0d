"""Entry point: global options, logging set-up and the one error handler."""

from __future__ import annotations

import logging
import signal
import sys

import typer

from kvsnap import __version__
from kvsnap.cli import (  # noqa: F401  (each module registers its commands)
    backup,
    daemon,
    demo,
    diff,
    drill,
    emulator,
    export,
    hold,
    importer,
    output,
    prune,
    reports,
    repository,
    restore,
    status,
    unlock,
    verify,
)
from kvsnap.cli import config as config_command  # noqa: F401  (renamed: not kvsnap.config)
from kvsnap.cli import log as log_command  # noqa: F401  (renamed: run() has a logger named log)
from kvsnap.cli import run as run_command  # noqa: F401  (renamed: this module defines run())
from kvsnap.cli.app import app
from kvsnap.cli.output import print_json, stderr
from kvsnap.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    KvsnapError,
)
from kvsnap.heap import limit_arenas
from kvsnap.logs import configure_logging, mask

_debug = False


def _show_version(value: bool) -> None:
    if value:
        print(f"kvsnap {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug lines."),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks of every error (implies -v)."
    ),
    log_format: str = typer.Option(
        "text", "--log-format", help="Log line format on stderr: text or json."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the version.",
    ),
) -> None:
    """Back up Cloudflare Workers KV namespaces into verified snapshots."""
    global _debug
    _debug = debug
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    configure_logging(logging.DEBUG if verbose or debug else logging.INFO, log_format)


# typer ships its own copy of click, whose exception classes differ from the
# click package's, so the base class is found through a public typer class.
_ClickException = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"
)


def _terminate(signum: int, frame: object) -> None:
    """Stop on SIGTERM as on Ctrl-C, so an unfinished snapshot gets no manifest."""
    raise KeyboardInterrupt


def run() -> None:
    """Run the CLI and map every outcome to its exit code."""
    log = logging.getLogger("kvsnap")
    signal.signal(signal.SIGTERM, _terminate)
    limit_arenas()
    try:
        result = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _ClickException as exc:  # usage errors: unknown option, bad value
        exc.show()
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        stderr.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except KvsnapError as exc:
        if _debug:
            log.debug("traceback of the error below", exc_info=True)
        message, hint = mask(exc.message), mask(exc.hint) if exc.hint else None
        stderr.print(f"error: {message}", markup=False, highlight=False)
        if hint:
            stderr.print(f"hint: {hint}", markup=False, highlight=False)
        if "--json" in sys.argv[1:] and not output.json_written:
            # Scripts that asked for JSON get a document on stdout either way.
            error = {"type": "error", "ok": False, "error": message, "hint": hint}
            print_json(error | {"exit_code": exc.exit_code})
        sys.exit(exc.exit_code)
    except Exception:
        log.exception("unexpected error (a bug in kvsnap)")
        sys.exit(EXIT_INTERNAL)
    if result == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this exit code
        stderr.print("interrupted")
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    run()
