"""Drill reports: the record of one restore test, as JSON, Markdown and HTML.

A `DrillReport` contains everything a reviewer needs to judge a drill without
running kvsnap: who ran it and where, the snapshot, the keys checked and the
mismatches, the time of each phase, the recovery targets, the estimate of a
full restore, and the commands that repeat the drill. The JSON form is the
record; the Markdown and HTML forms are rendered from it.

Reports are stored in the repository beside the snapshots::

    reports/<YYYY-MM-DD>T<HHMMSS>Z-<report id>/report.json
    reports/<YYYY-MM-DD>T<HHMMSS>Z-<report id>/report.md
    reports/<YYYY-MM-DD>T<HHMMSS>Z-<report id>/report.html

The HTML page is self-contained: inline CSS, no script, no external
resource, and a Content-Security-Policy that forbids both. Every text taken
from the data (keys, titles, messages) is escaped, and control and format
characters in keys are shown as escapes. No report contains an API token or
any other secret: the report holds only the fields below, and messages pass
through `kvsnap.logs.mask`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import secrets
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from kvsnap.errors import ConfigError, ObjectNotFound, RepositoryError
from kvsnap.format import encode_json
from kvsnap.limits import STORAGE_CONCURRENCY
from kvsnap.logs import mask
from kvsnap.repository import Repository, format_timestamp, parse_timestamp

log = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
REPORTS_DIR = "reports"
REPORT_FORMATS = ("json", "md", "html")
# A report lists at most this many mismatching keys; the count is always complete.
MISMATCHES_SHOWN = 100

_FOLDER_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{6}Z-(?P<id>[0-9a-f]{8})")
_REPORT_ID_RE = re.compile(r"[0-9a-f]{1,8}")


def new_report_id() -> str:
    return secrets.token_hex(4)


def report_folder(created: datetime, report_id: str) -> str:
    """Return the repository folder of a report: reports/<UTC time>-<id>."""
    moment = created.astimezone(UTC)
    return f"{REPORTS_DIR}/{moment:%Y-%m-%d}T{moment:%H%M%S}Z-{report_id}"


# The report's shape. Field names are part of the stored format.


class Phase(msgspec.Struct, frozen=True):
    """One timed step of the drill."""

    name: str  # download, validate, plan, write, read_back, cleanup
    seconds: float
    detail: str = ""


class MismatchEntry(msgspec.Struct, frozen=True):
    """A key whose restored state differs from the snapshot, and how."""

    key: str
    fields: list[str]  # missing, value, metadata, expiration, not-in-snapshot


class SnapshotInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The drilled snapshot as its manifest describes it."""

    id: str
    account_id: str
    read_started: str
    read_finished: str
    keys: int
    value_bytes: int
    stored_bytes: int
    parts: int
    tags: list[str] = []


class SandboxInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The namespace the sample was restored into."""

    namespace_id: str
    title: str
    created: bool  # created by the drill (deleted afterwards unless kept)
    deleted: bool = False
    keys_removed: bool = False  # a given sandbox emptied again after the drill


class Counts(msgspec.Struct, kw_only=True):
    """How many keys the drill looked at, by outcome."""

    snapshot_records: int = 0  # records decoded and validated (all of them)
    eligible: int = 0  # valid and not expiring: what a full restore writes
    selected: int = 0  # keys chosen for the sandbox
    written: int = 0
    checked: int = 0  # read back and equal, byte for byte
    mismatched: int = 0
    expired: int = 0  # in the snapshot but expired by now: not restorable
    expiring: int = 0  # expire too soon to write
    invalid: int = 0  # records that Workers KV would reject
    named_missing: int = 0  # keys named by --keys-from that the snapshot lacks


class RtoEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """An estimate of a full restore of the snapshot, with its inputs.

    Download and validate were measured on the whole snapshot. Write and
    the first read-back are scaled from the sample, or measured when the
    drill wrote every restorable key (`measured_in_full`). The wait for
    eventual consistency is added as measured, and the API budget gives a
    floor.
    """

    seconds: float
    download_seconds: float
    validate_seconds: float
    write_seconds: float
    read_back_seconds: float  # one read of every key, scaled from the sample
    # Re-reading keys that differed, as measured. Reports stored before
    # this field existed scaled that wait into read_back_seconds.
    consistency_wait_seconds: float = 0.0
    api_budget_seconds: float  # the minimum time the rate limit allows
    keys: int
    body_bytes: int  # bulk-write request bodies for every restorable key
    write_requests: int
    read_requests: int
    rate_limit_requests: int
    rate_limit_window_seconds: float
    # The drill wrote and read back every restorable key, so the write and
    # read-back times are measured, not scaled. Older reports lack it.
    measured_in_full: bool = False


class ErrorInfo(msgspec.Struct, frozen=True):
    """The error that stopped a drill."""

    type: str
    message: str
    exit_code: int
    hint: str | None = None


class DrillReport(msgspec.Struct, kw_only=True):
    """The record of one drill; `ReportSummary` reads its top-level fields."""

    format_version: int = REPORT_FORMAT_VERSION
    kind: str = "drill"
    id: str
    created: str  # RFC 3339, UTC: when the drill started
    finished: str = ""
    ok: bool = False  # every selected key restored and read back equal
    rpo_ok: bool | None = None
    rto_ok: bool | None = None
    rto_estimate_seconds: float | None = None
    namespace_id: str
    namespace_title: str = ""
    snapshot_id: str | None = None
    tool_version: str
    user: str
    host: str
    repository: str
    account_id: str
    api_host: str
    snapshot: SnapshotInfo | None = None
    snapshot_age_seconds: float | None = None
    rpo_target_seconds: float
    rto_target_seconds: float
    rto: RtoEstimate | None = None
    sandbox: SandboxInfo | None = None
    mode: str = "sample"  # sample, all or keys-from
    sample: int | None = None
    seed: int | None = None
    keys_file: str | None = None
    counts: Counts = msgspec.field(default_factory=Counts)
    mismatches: list[MismatchEntry] = []  # the first MISMATCHES_SHOWN
    phases: list[Phase] = []
    problems: list[str] = []  # why the drill failed
    warnings: list[str] = []
    commands: list[str] = []
    error: ErrorInfo | None = None
    exit_code: int = 0

    @property
    def folder(self) -> str:
        return report_folder(parse_timestamp(self.created), self.id)

    @property
    def targets_met(self) -> bool:
        return self.rpo_ok is True and self.rto_ok is True


class ReportSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a stored report that listings and `kvsnap status` need."""

    id: str
    kind: str
    created: str
    namespace_id: str
    namespace_title: str
    snapshot_id: str | None
    ok: bool
    rpo_ok: bool | None
    rto_ok: bool | None
    rto_estimate_seconds: float | None
    # Why report.json could not be decoded; None for a readable report.
    damaged: str | None = None


# Storing and finding reports.


def render_json(report: DrillReport) -> bytes:
    return encode_json(report)


def render_all(report: DrillReport) -> dict[str, bytes]:
    """Return the report in every format, by file extension."""
    return {
        "json": render_json(report),
        "md": render_markdown(report).encode("utf-8"),
        "html": render_html(report).encode("utf-8"),
    }


async def store_report(repo: Repository, report: DrillReport) -> str:
    """Write the three forms of the report into the repository; return the folder."""
    folder = report.folder
    for extension, data in render_all(report).items():
        await repo.storage.put(f"{folder}/report.{extension}", data)
    return folder


def write_report_files(report: DrillReport, directory: Path) -> list[Path]:
    """Write the three forms into `directory` as kvsnap-drill-<time>-<id>.<ext>."""
    stem = "kvsnap-drill-" + report.folder.rpartition("/")[2]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for extension, data in render_all(report).items():
            path = directory / f"{stem}.{extension}"
            path.write_bytes(data)
            written.append(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the drill report into {directory}: {exc.strerror}",
            hint="pass --output with a writable folder; the report is also "
            "stored in the repository",
        ) from exc
    return written


async def _report_folders(repo: Repository) -> list[str]:
    folders = set()
    for path, _size in await repo.storage.list(REPORTS_DIR):
        segments = path.split("/")
        is_report = len(segments) == 3 and segments[2] == "report.json"
        if is_report and _FOLDER_RE.fullmatch(segments[1]):
            folders.add(f"{REPORTS_DIR}/{segments[1]}")
    return sorted(folders)


async def list_reports(repo: Repository) -> list[ReportSummary]:
    """Return the summary of every stored report, oldest first.

    A report.json that cannot be decoded is listed as a failed drill (see
    `_damaged_summary`), so that a damaged newest report does not let an
    older passing one count as the last drill.
    """
    gate = asyncio.Semaphore(STORAGE_CONCURRENCY)

    async def load(folder: str) -> ReportSummary:
        async with gate:
            data = await repo.storage.get(f"{folder}/report.json")
        try:
            return msgspec.json.decode(data, type=ReportSummary)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("report %s/report.json is damaged: %s", folder, exc)
            async with gate:
                markdown = await _read_optional(repo, f"{folder}/report.md")
            return _damaged_summary(folder, data, markdown, str(exc))

    summaries = await asyncio.gather(*(load(f) for f in await _report_folders(repo)))
    return sorted(summaries, key=lambda s: (s.created, s.id))


async def _read_optional(repo: Repository, path: str) -> bytes:
    try:
        return await repo.storage.get(path)
    except ObjectNotFound:
        return b""


# A field in the compact JSON that `render_json` writes, as a JSON string.
_JSON_FIELD_RE = r'"{}"\s*:\s*("(?:[^"\\]|\\.)*")'
# The "Namespace" row of the Markdown form ends with the namespace id in brackets.
_MD_NAMESPACE_RE = re.compile(r"^\| Namespace \| .*\(([^()\s|]+)\) \|$", re.MULTILINE)


def _damaged_summary(
    folder: str, data: bytes, markdown: bytes, reason: str
) -> ReportSummary:
    """Summarize a report whose report.json cannot be decoded as a failed drill.

    The id and time come from the folder name. The namespace comes from
    whatever part of report.json is readable (a truncated file still starts
    with it), else from the Markdown form, else it stays empty, and then
    `kvsnap status` cannot tie the report to a namespace. `ok`, the
    targets and the snapshot are never taken from the damaged file; `damaged`
    holds the decoding error.
    """
    name = folder.rpartition("/")[2]
    match = _FOLDER_RE.fullmatch(name)
    assert match is not None  # _report_folders lists only matching names
    moment = datetime.strptime(name[: -len(match["id"]) - 1], "%Y-%m-%dT%H%M%SZ")
    text = data.decode("utf-8", errors="replace")
    namespace_id = _json_string(text, "namespace_id")
    if not namespace_id:
        found = _MD_NAMESPACE_RE.search(markdown.decode("utf-8", errors="replace"))
        namespace_id = found[1] if found else ""
    title = _json_string(text, "namespace_title") or namespace_id or "unknown namespace"
    return ReportSummary(
        id=match["id"],
        kind="drill",
        created=format_timestamp(moment.replace(tzinfo=UTC)),
        namespace_id=namespace_id,
        namespace_title=title,
        snapshot_id=None,
        ok=False,
        rpo_ok=None,
        rto_ok=None,
        rto_estimate_seconds=None,
        damaged=reason,
    )


def _json_string(text: str, field: str) -> str:
    """Return the first string value of `field` in damaged report JSON, or "".

    The top-level namespace fields come before every nested object, so the
    first match is the top-level one.
    """
    found = re.search(_JSON_FIELD_RE.format(field), text)
    if found is None:
        return ""
    try:
        value = json.loads(found[1])
    except ValueError:
        return ""
    return value if isinstance(value, str) else ""


async def find_report(repo: Repository, selector: str) -> str:
    """Return the folder of the report named by its id or a unique id prefix."""
    text = selector.strip().lower()
    if text.startswith(f"{REPORTS_DIR}/"):
        text = text.partition("/")[2]
    match = _FOLDER_RE.fullmatch(text)
    wanted = match["id"] if match else text
    if not _REPORT_ID_RE.fullmatch(wanted):
        raise ConfigError(
            f"invalid report id {selector!r}: expected the 8 hexadecimal "
            "characters that `kvsnap reports` lists, or a prefix of them"
        )
    folders = [
        folder
        for folder in await _report_folders(repo)
        if _FOLDER_RE.fullmatch(folder.partition("/")[2])["id"].startswith(wanted)  # type: ignore[index]
    ]
    if not folders:
        raise ObjectNotFound(
            f"no report {selector!r} in {repo.url}",
            hint="list the stored reports with `kvsnap reports`",
        )
    if len(folders) > 1:
        raise ConfigError(
            f"report id prefix {selector!r} is ambiguous: it matches "
            + ", ".join(folder.rpartition("-")[2] for folder in folders),
            hint="give more characters of the id",
        )
    return folders[0]


async def read_report(repo: Repository, selector: str, extension: str) -> bytes:
    """Return one stored form (json, md or html) of the report `selector` names."""
    if extension not in REPORT_FORMATS:
        raise ConfigError(f"invalid report format {extension!r}: use json, md or html")
    folder = await find_report(repo, selector)
    try:
        return await repo.storage.get(f"{folder}/report.{extension}")
    except ObjectNotFound as exc:
        raise RepositoryError(f"{folder}/report.{extension} is missing") from exc


# Text helpers shared by the Markdown and HTML forms.


def visible_key(key: str) -> str:
    """Return the key with control, format and separator characters escaped.

    Keys are arbitrary UTF-8, so a key could hide a newline, a bidirectional
    override or a NUL. Those are written as \\xNN or \\uNNNN, and a backslash
    as two, so that two different keys never look the same.
    """
    out = []
    for char in key:
        category = unicodedata.category(char)
        if char == "\\":
            out.append("\\\\")
        elif category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def format_seconds(seconds: float | None) -> str:
    """Format a duration for people: 350 ms, 4.2 s, 3 min 20 s, 2 h 05 min."""
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    if seconds < 86400 * 2:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest:02d} min" if rest else f"{hours} h"
    return f"{seconds / 86400:.1f} days"


def format_bytes(size: int) -> str:
    """Format a byte count with binary units: 512 B, 1.5 KiB, 3.2 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _when(text: str) -> str:
    return parse_timestamp(text).strftime("%Y-%m-%d %H:%M:%S UTC")


def _verdict(report: DrillReport) -> str:
    return "PASS" if report.ok else "FAIL"


def _target_word(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[ok]


PHASE_TITLES = {
    "download": "Download",
    "validate": "Validate",
    "plan": "Plan",
    "write": "Write",
    "read_back": "Read-back",
    "cleanup": "Clean-up",
}


def plural(count: int, noun: str) -> str:
    """Return "1 part", "2 parts", with thousands separators."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def headline(report: DrillReport) -> str:
    """Return the one-line outcome: keys restored, read back equal, mismatched.

    Keys that --keys-from lists but the snapshot lacks are counted apart:
    they were never restored, so they are not mismatches of the sandbox.
    """
    counts = report.counts
    if report.error is not None:
        return f"The drill stopped with an error: {mask(report.error.message)}"
    differing = counts.mismatched - counts.named_missing
    parts = [
        f"{plural(counts.written, 'key')} restored into a sandbox",
        f"{counts.checked:,} read back equal",
    ]
    if differing or not counts.named_missing:
        parts.append(f"{differing:,} mismatched")
    if counts.named_missing:
        listed = "listed key" if counts.named_missing == 1 else "listed keys"
        parts.append(f"{counts.named_missing:,} {listed} not in the snapshot")
    return ", ".join(parts) + "."


def targets_line(report: DrillReport) -> str:
    """Return the recovery targets in one line: RPO met, RTO missed."""
    return (
        f"Recovery targets: RPO {_target_word(report.rpo_ok)}, "
        f"RTO {_target_word(report.rto_ok)}."
    )


# Markdown.

# Characters that start Markdown syntax inside a line or end a table cell.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _md(text: str) -> str:
    """Escape text for Markdown: HTML entities, then Markdown punctuation."""
    escaped = html.escape(mask(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", escaped)


def _md_key(key: str) -> str:
    return _md(visible_key(key))


def render_markdown(report: DrillReport) -> str:
    """Render the report as GitHub-flavoured Markdown."""
    lines = [
        f"# Restore drill: {_verdict(report)}",
        "",
        f"**{_md(headline(report))}** {_md(targets_line(report))}",
        "",
        *_md_overview(report),
        "",
        "## Recovery targets",
        "",
        "| Target | Measured | Goal | Result |",
        "|---|---|---|---|",
        f"| RPO (age of the snapshot) | {format_seconds(report.snapshot_age_seconds)}"
        f" | {format_seconds(report.rpo_target_seconds)}"
        f" | {_target_word(report.rpo_ok)} |",
        "| RTO (full restore, estimated)"
        f" | {format_seconds(report.rto_estimate_seconds)}"
        f" | {format_seconds(report.rto_target_seconds)}"
        f" | {_target_word(report.rto_ok)} |",
        "",
        "## Keys",
        "",
        "| | Keys |",
        "|---|---:|",
        *(f"| {label} | {value:,} |" for label, value in _count_rows(report)),
        "",
    ]
    lines += _md_problems(report)
    lines += _md_mismatches(report)
    lines += [
        "## Phase timings",
        "",
        "| Phase | Time | Detail |",
        "|---|---:|---|",
        *(
            f"| {PHASE_TITLES.get(p.name, p.name)} | {format_seconds(p.seconds)}"
            f" | {_md(p.detail)} |"
            for p in report.phases
        ),
        "",
    ]
    lines += _md_rto(report)
    lines += [
        "## Reproduce",
        "",
        "Set `CLOUDFLARE_API_TOKEN` to a token with Workers KV Storage Edit "
        "permission (not recorded here), then run:",
        "",
        "```sh",
        *(_code_line(command) for command in report.commands),
        "```",
        "",
        f"Report {report.id}, kvsnap {report.tool_version}.",
        "",
    ]
    return "\n".join(lines)


def _code_line(command: str) -> str:
    # A fenced block shows text as it is; only a fence inside could end it.
    return mask(command).replace("```", "`\u200b``")


def _md_overview(report: DrillReport) -> list[str]:
    rows = _overview_rows(report)
    return ["| | |", "|---|---|", *(f"| {k} | {_md(v)} |" for k, v in rows)]


def _md_problems(report: DrillReport) -> list[str]:
    lines = []
    if report.problems:
        lines += ["## Problems", "", *(f"- {_md(p)}" for p in report.problems), ""]
    if report.warnings:
        lines += ["## Warnings", "", *(f"- {_md(w)}" for w in report.warnings), ""]
    return lines


def _md_mismatches(report: DrillReport) -> list[str]:
    if not report.mismatches:
        return []
    lines = ["## Mismatched keys", "", "| Key | Differs in |", "|---|---|"]
    lines += [
        f"| {_md_key(m.key)} | {_md(', '.join(m.fields))} |" for m in report.mismatches
    ]
    hidden = report.counts.mismatched - len(report.mismatches)
    if hidden > 0:
        lines += ["", f"and {hidden:,} more, not listed."]
    return [*lines, ""]


def _md_rto(report: DrillReport) -> list[str]:
    if report.rto is None:
        return []
    rows = _rto_rows(report.rto)
    return [
        "## How the RTO estimate is made",
        "",
        "| Part | Value |",
        "|---|---|",
        *(f"| {label} | {_md(value)} |" for label, value in rows),
        "",
    ]


# Rows shared by both renderers.


def _overview_rows(report: DrillReport) -> list[tuple[str, str]]:
    snapshot = report.snapshot
    namespace = report.namespace_title or report.namespace_id
    rows = [
        ("Date", _when(report.created)),
        ("Run by", f"{report.user}@{report.host}"),
        ("Repository", report.repository),
        ("Cloudflare account", report.account_id),
        ("API host", report.api_host),
        ("Namespace", f"{namespace} ({report.namespace_id})"),
    ]
    if snapshot is not None:
        rows += [
            (
                "Snapshot",
                f"{snapshot.id}, read at {_when(snapshot.read_started)}, "
                f"{snapshot.keys:,} keys, {format_bytes(snapshot.value_bytes)} "
                f"of values, {format_bytes(snapshot.stored_bytes)} stored",
            )
        ]
    else:
        rows.append(("Snapshot", "none found"))
    rows.append(("Keys restored", _selection_text(report)))
    if report.sandbox is not None:
        rows.append(("Sandbox", _sandbox_text(report.sandbox)))
    return rows


def _selection_text(report: DrillReport) -> str:
    if report.mode == "all":
        return "every key of the snapshot"
    if report.mode == "keys-from":
        return f"the keys listed in {report.keys_file}"
    return f"a random sample of {report.sample:,} keys (seed {report.seed})"


def _sandbox_text(sandbox: SandboxInfo) -> str:
    text = f"{sandbox.title} ({sandbox.namespace_id}), "
    if sandbox.created:
        text += "created for the drill, " + (
            "deleted afterwards" if sandbox.deleted else "kept"
        )
    else:
        text += "given by the operator, " + (
            "emptied afterwards" if sandbox.keys_removed else "restored keys kept"
        )
    return text


def _count_rows(report: DrillReport) -> list[tuple[str, int]]:
    counts = report.counts
    rows = [
        ("Records in the snapshot, decoded and validated", counts.snapshot_records),
        ("Selected for the drill", counts.selected),
        ("Written to the sandbox", counts.written),
        ("Read back equal (value, metadata, expiration)", counts.checked),
        ("Read back different", counts.mismatched - counts.named_missing),
    ]
    optional = [
        ("Expired since the backup (not restorable)", counts.expired),
        ("Expiring too soon to write", counts.expiring),
        ("Invalid records", counts.invalid),
        ("Listed keys missing from the snapshot", counts.named_missing),
    ]
    return rows + [(label, value) for label, value in optional if value]


def _rto_rows(rto: RtoEstimate) -> list[tuple[str, str]]:
    budget = (
        f"{rto.rate_limit_requests:,} requests per "
        f"{format_seconds(rto.rate_limit_window_seconds)}"
    )
    basis = (
        "measured on every key" if rto.measured_in_full else "scaled from the sample"
    )
    return [
        (
            "Download and check every part (measured)",
            format_seconds(rto.download_seconds),
        ),
        (
            "Decode and validate every record (measured)",
            format_seconds(rto.validate_seconds),
        ),
        (
            f"Write {plural(rto.keys, 'key')}, {format_bytes(rto.body_bytes)} in "
            f"{plural(rto.write_requests, 'bulk write')} ({basis})",
            format_seconds(rto.write_seconds),
        ),
        (
            f"Read back {plural(rto.keys, 'key')} once in "
            f"{plural(rto.read_requests, 'request')} ({basis})",
            format_seconds(rto.read_back_seconds),
        ),
        (
            "Re-read keys until KV's eventual consistency caught up "
            "(measured, not scaled)",
            format_seconds(rto.consistency_wait_seconds),
        ),
        (
            f"Least time the API budget ({budget}) allows",
            format_seconds(rto.api_budget_seconds),
        ),
        (
            "Estimate: download + validate + the larger of API work and budget",
            format_seconds(rto.seconds),
        ),
    ]


# HTML.

_CSS = """
:root { --ink:#1f2933; --muted:#52606d; --line:#d9e2ec; --pass:#0e7c3a;
  --pass-bg:#e3f6ea; --fail:#b42318; --fail-bg:#fdecea; --warn:#8a5a00;
  --warn-bg:#fff4d6; --panel:#f7f9fb; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef2f6; color: var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 28px auto; background: #fff; padding: 36px 44px;
  border-radius: 10px; box-shadow: 0 1px 3px rgba(15,23,42,.12); }
header { display: flex; justify-content: space-between; align-items: flex-start;
  gap: 24px; border-bottom: 1px solid var(--line); padding-bottom: 18px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
  color: var(--muted); margin: 0 0 4px; }
h1 { font-size: 26px; margin: 0; }
h2 { font-size: 17px; margin: 32px 0 10px; }
.verdict { font-size: 22px; font-weight: 700; padding: 10px 22px; border-radius: 8px;
  letter-spacing: .04em; white-space: nowrap; }
.verdict.pass { color: var(--pass); background: var(--pass-bg);
  border: 2px solid var(--pass); }
.verdict.fail { color: var(--fail); background: var(--fail-bg);
  border: 2px solid var(--fail); }
.summary { margin: 18px 0 0; font-size: 16px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 14px;
  margin-top: 22px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 16px; }
.card .label { font-size: 12px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .06em; }
.card .value { font-size: 24px; font-weight: 700; margin-top: 2px; }
.card .value.bad { color: var(--fail); }
.card .note { font-size: 13px; color: var(--muted); }
.badge { display: inline-block; font-size: 12px; font-weight: 700; padding: 1px 8px;
  border-radius: 999px; }
.badge.met { color: var(--pass); background: var(--pass-bg); }
.badge.missed { color: var(--fail); background: var(--fail-bg); }
.badge.unknown { color: var(--warn); background: var(--warn-bg); }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); font-weight: 600; }
table.facts th { width: 190px; text-transform: none; letter-spacing: 0;
  font-size: 14px; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.barcell { vertical-align: middle; width: 30%; }
.bar { background: #dde7f0; height: 8px; border-radius: 4px; min-width: 2px; }
.bar > span { display: block; height: 8px; border-radius: 4px; background: #3e7cb1; }
code, pre, .key { font-family: "SFMono-Regular", Consolas, "Liberation Mono", monospace;
  font-size: 13px; }
.key { word-break: break-all; }
pre { background: #102a43; color: #e9f0f6; padding: 14px 16px; border-radius: 8px;
  white-space: pre-wrap; word-break: break-all; }
.box { border-radius: 8px; padding: 10px 16px; margin: 10px 0; }
.box.fail { background: var(--fail-bg); border-left: 4px solid var(--fail); }
.box.warn { background: var(--warn-bg); border-left: 4px solid #d69e2e; }
.box ul { margin: 4px 0; padding-left: 20px; }
footer { margin-top: 32px; color: var(--muted); font-size: 13px;
  border-top: 1px solid var(--line); padding-top: 12px; }
@media print { body { background: #fff; } main { box-shadow: none; margin: 0; } }
"""


def _h(text: str) -> str:
    return html.escape(mask(text), quote=True)


def _badge(ok: bool | None) -> str:
    css = {True: "met", False: "missed", None: "unknown"}[ok]
    return f'<span class="badge {css}">{_h(_target_word(ok))}</span>'


def render_html(report: DrillReport) -> str:
    """Render the report as one self-contained HTML page."""
    verdict = _verdict(report)
    name = report.namespace_title or report.namespace_id
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Restore drill {verdict}: {_h(name)} {_h(_when(report.created))}"
        "</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<header><div>",
        '<p class="eyebrow">kvsnap restore drill · management review</p>',
        f"<h1>Restore drill: {_h(name)}</h1>",
        f'<p class="eyebrow">{_h(_when(report.created))}</p>',
        f'</div><div class="verdict {verdict.lower()}">{verdict}</div></header>',
        f'<p class="summary"><strong>{_h(headline(report))}</strong> '
        f"{_h(targets_line(report))}</p>",
        _html_cards(report),
        *_html_problems(report),
        "<h2>Drill</h2>",
        _html_facts(_overview_rows(report)),
        "<h2>Recovery targets</h2>",
        _html_targets(report),
        "<h2>Keys</h2>",
        _html_counts(report),
        *_html_mismatches(report),
        "<h2>Phase timings</h2>",
        _html_phases(report),
        *_html_rto(report),
        "<h2>Reproduce this drill</h2>",
        "<p>Set <code>CLOUDFLARE_API_TOKEN</code> to a token with Workers KV "
        "Storage Edit permission (it is not recorded here), then run:</p>",
        f"<pre>{_h(chr(10).join(report.commands))}</pre>",
        f"<footer>Report {_h(report.id)} · kvsnap {_h(report.tool_version)} · "
        f"started {_h(_when(report.created))}"
        + (f", finished {_h(_when(report.finished))}" if report.finished else "")
        + "</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_cards(report: DrillReport) -> str:
    counts = report.counts
    cards = [
        ("Keys checked", f"{counts.checked:,}", f"of {counts.selected:,} selected"),
        ("Mismatches", f"{counts.mismatched:,}", _mismatch_note(counts)),
        (
            "RPO",
            format_seconds(report.snapshot_age_seconds),
            f"target {format_seconds(report.rpo_target_seconds)} ",
        ),
        (
            "RTO estimate",
            format_seconds(report.rto_estimate_seconds),
            f"target {format_seconds(report.rto_target_seconds)} ",
        ),
    ]
    badges = ["", "", _badge(report.rpo_ok), _badge(report.rto_ok)]
    alarms = [counts.checked == 0, counts.mismatched > 0, False, False]
    html_cards = [
        f'<div class="card"><div class="label">{_h(label)}</div>'
        f'<div class="value{" bad" if alarm else ""}">{_h(value)}</div>'
        f'<div class="note">{_h(note)}{badge}</div></div>'
        for (label, value, note), badge, alarm in zip(
            cards, badges, alarms, strict=True
        )
    ]
    return '<div class="cards">' + "".join(html_cards) + "</div>"


def _mismatch_note(counts: Counts) -> str:
    if not counts.named_missing:
        return "value, metadata or expiration"
    return f"of which {counts.named_missing:,} listed but not in the snapshot"


def _html_problems(report: DrillReport) -> list[str]:
    out = []
    problems = list(report.problems)
    if report.error is not None and report.error.hint:
        problems.append(f"Hint: {report.error.hint}")
    if problems:
        items = "".join(f"<li>{_h(p)}</li>" for p in problems)
        out.append(
            f'<div class="box fail"><strong>Problems</strong><ul>{items}</ul></div>'
        )
    if report.warnings:
        items = "".join(f"<li>{_h(w)}</li>" for w in report.warnings)
        out.append(
            f'<div class="box warn"><strong>Warnings</strong><ul>{items}</ul></div>'
        )
    return out


def _html_facts(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows)
    return f'<table class="facts">{body}</table>'


def _html_targets(report: DrillReport) -> str:
    rows = [
        (
            "RPO: age of the snapshot when the drill ran",
            report.snapshot_age_seconds,
            report.rpo_target_seconds,
            report.rpo_ok,
        ),
        (
            "RTO: estimated time of a full restore",
            report.rto_estimate_seconds,
            report.rto_target_seconds,
            report.rto_ok,
        ),
    ]
    body = "".join(
        f'<tr><td>{_h(label)}</td><td class="num">{_h(format_seconds(measured))}</td>'
        f'<td class="num">{_h(format_seconds(goal))}</td><td>{_badge(ok)}</td></tr>'
        for label, measured, goal, ok in rows
    )
    return (
        "<table><tr><th>Target</th><th>Measured</th><th>Goal</th><th>Result</th></tr>"
        f"{body}</table>"
    )


def _html_counts(report: DrillReport) -> str:
    body = "".join(
        f'<tr><td>{_h(label)}</td><td class="num">{value:,}</td></tr>'
        for label, value in _count_rows(report)
    )
    return f"<table>{body}</table>"


def _html_mismatches(report: DrillReport) -> list[str]:
    if not report.mismatches:
        return []
    body = "".join(
        f'<tr><td class="key">{_h(visible_key(m.key))}</td>'
        f"<td>{_h(', '.join(m.fields))}</td></tr>"
        for m in report.mismatches
    )
    hidden = report.counts.mismatched - len(report.mismatches)
    more = f"<p>and {hidden:,} more, not listed.</p>" if hidden > 0 else ""
    return [
        "<h2>Mismatched keys</h2>",
        f"<table><tr><th>Key</th><th>Differs in</th></tr>{body}</table>{more}",
    ]


def _html_phases(report: DrillReport) -> str:
    longest = max((p.seconds for p in report.phases), default=0.0) or 1.0
    body = "".join(
        f"<tr><td>{_h(PHASE_TITLES.get(p.name, p.name))}</td>"
        f'<td class="num">{_h(format_seconds(p.seconds))}</td>'
        f'<td class="barcell"><div class="bar"><span style="width:'
        f'{max(1.0, 100 * p.seconds / longest):.1f}%"></span></div></td>'
        f"<td>{_h(p.detail)}</td></tr>"
        for p in report.phases
    )
    return (
        "<table><tr><th>Phase</th><th>Time</th><th></th><th>Detail</th></tr>"
        f"{body}</table>"
    )


def _html_rto(report: DrillReport) -> list[str]:
    if report.rto is None:
        return []
    body = "".join(
        f'<tr><td>{_h(label)}</td><td class="num">{_h(value)}</td></tr>'
        for label, value in _rto_rows(report.rto)
    )
    return ["<h2>How the RTO estimate is made</h2>", f"<table>{body}</table>"]
