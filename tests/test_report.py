"""Drill reports: rendering, escaping, storage, the RTO estimate, a browser view."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from pathlib import Path

import msgspec
import pytest

from kvsnap.drill import Measurements, estimate_rto
from kvsnap.errors import ConfigError, ObjectNotFound
from kvsnap.logs import register_secret
from kvsnap.report import (
    Counts,
    DrillReport,
    ErrorInfo,
    MismatchEntry,
    Phase,
    ReportSummary,
    RtoEstimate,
    SandboxInfo,
    SnapshotInfo,
    find_report,
    format_seconds,
    headline,
    list_reports,
    read_report,
    render_html,
    render_json,
    render_markdown,
    store_report,
    visible_key,
    write_report_files,
)
from kvsnap.repository import Repository

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_KEYS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "pipe|in|key",
    "line\nbreak",
    "\u202eevil.exe",
    "back`tick`",
    "nul\x00byte",
]


def make_report(**changes: object) -> DrillReport:
    report = DrillReport(
        id="0a1b2c3d",
        created="2026-03-01T09:30:00.000Z",
        finished="2026-03-01T09:30:05.250Z",
        ok=True,
        rpo_ok=True,
        rto_ok=True,
        rto_estimate_seconds=5025.0,
        namespace_id="2e007cde689b4564a1ca60227e42da17",
        namespace_title="auth-state",
        snapshot_id="6df627d264dc35a5",
        tool_version="0.1.0",
        user="ops",
        host="backup-1",
        repository="s3://backups/kv",
        account_id="023e105f4ecef8ad9ca31a8372d0c353",
        api_host="api.cloudflare.com",
        snapshot=SnapshotInfo(
            id="6df627d264dc35a5",
            account_id="023e105f4ecef8ad9ca31a8372d0c353",
            read_started="2026-03-01T03:00:00.000Z",
            read_finished="2026-03-01T03:02:00.000Z",
            keys=1_250_000,
            value_bytes=3_400_000_000,
            stored_bytes=900_000_000,
            parts=28,
        ),
        snapshot_age_seconds=23400.0,
        rpo_target_seconds=86400.0,
        rto_target_seconds=14400.0,
        sandbox=SandboxInfo(
            namespace_id="f" * 32,
            title="kvsnap-drill-6df627d264dc35a5-20260301T093000Z",
            created=True,
            deleted=True,
        ),
        mode="sample",
        sample=100,
        seed=42,
        counts=Counts(
            snapshot_records=1_250_000,
            eligible=1_249_990,
            selected=100,
            written=100,
            checked=100,
            expired=10,
        ),
        phases=[
            Phase("download", 41.5, "28 parts, 858.3 MiB, sizes and sha256 checked"),
            Phase("validate", 12.25, "1,250,000 records decoded and checked"),
            Phase("write", 0.42, "100 keys, 12.0 KiB in 1 bulk write"),
            Phase("read_back", 0.31, "100 keys read and compared"),
        ],
        commands=[
            "CLOUDFLARE_ACCOUNT_ID=023e105f4ecef8ad9ca31a8372d0c353 kvsnap drill "
            "2e007cde689b4564a1ca60227e42da17 --snapshot 6df627d264dc35a5 --sample 100 "
            "--seed 42 --repo s3://backups/kv",
        ],
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def failed_report() -> DrillReport:
    mismatches = [MismatchEntry(key, ["value"]) for key in HOSTILE_KEYS]
    counts = Counts(selected=100, written=100, checked=93, mismatched=107)
    return make_report(
        ok=False,
        rto_ok=False,
        mismatches=mismatches,
        counts=counts,
        problems=["Mismatched keys: 107."],
        exit_code=7,
    )


def test_markdown_pass_content() -> None:
    text = render_markdown(make_report())

    assert text.startswith("# Restore drill: PASS\n")
    assert (
        "**100 keys restored into a sandbox, 100 read back equal, 0 mismatched.**"
        in text
    )
    assert "| Run by | ops@backup\\-1 |" not in text  # hyphens are not escaped
    assert "| Run by | ops@backup-1 |" in text
    assert "| RPO (age of the snapshot) | 6 h 30 min | 24 h | met |" in text
    assert "| RTO (full restore, estimated) | 1 h 24 min | 4 h | met |" in text
    assert "| Download | 41.5 s |" in text
    assert "--sample 100 --seed 42" in text
    assert "## Mismatched keys" not in text


def test_markdown_escapes_hostile_keys() -> None:
    text = render_markdown(failed_report())

    assert text.startswith("# Restore drill: FAIL\n")
    assert "<script>" not in text
    assert "<img" not in text
    assert "&lt;script&gt;" in text
    assert "pipe\\|in\\|key" in text
    assert "line\\\\x0abreak" in text
    assert "\u202e" not in text
    assert "\x00" not in text
    table = text.split("## Mismatched keys")[1].split("\n\n")[1]
    assert all(line.startswith("|") for line in table.splitlines())
    assert "and 100 more, not listed." in text


def test_html_escapes_hostile_keys() -> None:
    page = render_html(failed_report())

    assert "<script" not in page.lower()
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "line\\x0abreak" in page
    assert "\\u202eevil.exe" in page
    assert "\u202e" not in page
    assert "\x00" not in page
    assert '<div class="verdict fail">FAIL</div>' in page


def test_html_is_self_contained() -> None:
    page = render_html(make_report())

    assert "Content-Security-Policy" in page
    assert "default-src 'none'" in page
    for marker in ("src=", "<link", "@import", "url(", "<iframe", "<object"):
        assert marker not in page
    assert '<div class="verdict pass">PASS</div>' in page
    assert "ops@backup-1" in page
    assert "s3://backups/kv" in page


def test_report_masks_secrets() -> None:
    secret = "tok-drill-secret-123456"
    register_secret(secret)
    report = make_report(
        ok=False,
        error=ErrorInfo("ApiError", f"request with {secret} failed", 12, None),
        problems=[f"The drill stopped: request with {secret} failed"],
    )

    markdown, page = render_markdown(report), render_html(report)

    assert secret not in markdown
    assert secret not in page
    assert "request with \\*\\*\\* failed" in markdown
    assert "request with *** failed" in page


def test_json_round_trip_and_summary() -> None:
    report = failed_report()
    data = render_json(report)

    assert msgspec.json.decode(data, type=DrillReport) == report
    summary = msgspec.json.decode(data, type=ReportSummary)
    assert summary == ReportSummary(
        id="0a1b2c3d",
        kind="drill",
        created="2026-03-01T09:30:00.000Z",
        namespace_id="2e007cde689b4564a1ca60227e42da17",
        namespace_title="auth-state",
        snapshot_id="6df627d264dc35a5",
        ok=False,
        rpo_ok=True,
        rto_ok=False,
        rto_estimate_seconds=5025.0,
    )


def test_store_list_find_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        repo = await Repository.init(str(tmp_path / "repo"))
        first = make_report()
        second = make_report(id="0a1b9999", created="2026-03-02T09:30:00.000Z")
        later = make_report(id="ffff0000", created="2026-04-01T00:00:00.000Z")
        for report in (later, first, second):
            await store_report(repo, report)

        summaries = await list_reports(repo)
        assert [s.id for s in summaries] == ["0a1b2c3d", "0a1b9999", "ffff0000"]
        assert await find_report(repo, "ffff") == later.folder
        assert await find_report(repo, "0a1b2c3d") == first.folder
        with pytest.raises(ConfigError, match="ambiguous"):
            await find_report(repo, "0a1b")
        with pytest.raises(ObjectNotFound, match="no report"):
            await find_report(repo, "1234")
        with pytest.raises(ConfigError, match="invalid report id"):
            await find_report(repo, "not-an-id")
        html_bytes = await read_report(repo, "ffff0000", "html")
        assert html_bytes.startswith(b"<!DOCTYPE html>")
        with pytest.raises(ConfigError, match="invalid report format"):
            await read_report(repo, "ffff0000", "pdf")

    asyncio.run(scenario())
    assert (tmp_path / "repo/reports/2026-03-01T093000Z-0a1b2c3d/report.md").is_file()


DAMAGED_FOLDER = "reports/2026-03-05T000000Z-deadbeef"


def list_with_damaged(tmp_path: Path, damaged: dict[str, bytes]) -> list[ReportSummary]:
    """Store a passing report, then `damaged` files in a later report folder."""

    async def scenario() -> list[ReportSummary]:
        repo = await Repository.init(str(tmp_path / "repo"))
        await store_report(repo, make_report())
        for name, data in damaged.items():
            await repo.storage.put(f"{DAMAGED_FOLDER}/{name}", data)
        return await list_reports(repo)

    return asyncio.run(scenario())


def test_list_damaged_report_fails(tmp_path: Path) -> None:
    later = make_report(id="deadbeef", created="2026-03-05T00:00:00.000Z")
    data = render_json(later)
    truncated = data[: data.index(b'"tool_version"')]  # a write cut short

    summaries = list_with_damaged(tmp_path, {"report.json": truncated})

    assert [s.id for s in summaries] == ["0a1b2c3d", "deadbeef"]
    damaged = summaries[-1]
    assert b'"ok": true' in truncated
    assert damaged.ok is False
    assert damaged.kind == "drill"
    assert damaged.created == "2026-03-05T00:00:00.000Z"
    assert damaged.namespace_id == "2e007cde689b4564a1ca60227e42da17"
    assert damaged.namespace_title == "auth-state"  # kvsnap reports marks it
    assert damaged.snapshot_id is None
    assert damaged.rto_ok is None
    assert damaged.damaged is not None
    assert summaries[0].damaged is None


def test_list_damaged_report_namespace_from_markdown(tmp_path: Path) -> None:
    later = make_report(id="deadbeef", created="2026-03-05T00:00:00.000Z")
    files = {
        "report.json": b"\x00" * 64,
        "report.md": render_markdown(later).encode(),
    }

    [_, damaged] = list_with_damaged(tmp_path, files)

    assert damaged.ok is False
    assert damaged.namespace_id == "2e007cde689b4564a1ca60227e42da17"
    assert damaged.namespace_title == "2e007cde689b4564a1ca60227e42da17"


def test_list_damaged_report_without_namespace(tmp_path: Path) -> None:
    [_, damaged] = list_with_damaged(tmp_path, {"report.json": b"{not json"})

    assert damaged.id == "deadbeef"
    assert damaged.ok is False
    assert damaged.namespace_id == ""
    assert damaged.namespace_title == "unknown namespace"


def test_list_report_of_wrong_shape_is_damaged(tmp_path: Path) -> None:
    [_, damaged] = list_with_damaged(tmp_path, {"report.json": b'{"ok": true}'})

    assert damaged.ok is False
    assert damaged.damaged is not None


def test_write_report_files_names(tmp_path: Path) -> None:
    paths = write_report_files(make_report(), tmp_path / "new" / "folder")

    assert [p.name for p in paths] == [
        "kvsnap-drill-2026-03-01T093000Z-0a1b2c3d.json",
        "kvsnap-drill-2026-03-01T093000Z-0a1b2c3d.md",
        "kvsnap-drill-2026-03-01T093000Z-0a1b2c3d.html",
    ]
    assert all(p.stat().st_size > 500 for p in paths)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "unknown"),
        (0.0123, "12 ms"),
        (4.25, "4.2 s"),
        (200, "3 min 20 s"),
        (3600, "1 h"),
        (7500, "2 h 05 min"),
        (86400 * 3, "3.0 days"),
    ],
)
def test_format_seconds(seconds: float | None, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("plain/key", "plain/key"),
        ("caf\u00e9", "caf\u00e9"),
        ("tab\there", "tab\\x09here"),
        ("back\\slash", "back\\\\slash"),
        ("\u202eright-to-left", "\\u202eright-to-left"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
    ],
)
def test_visible_key(key: str, shown: str) -> None:
    assert visible_key(key) == shown


def measurements(**changes: float) -> Measurements:
    measured = Measurements(
        download_seconds=40.0,
        validate_seconds=10.0,
        eligible_keys=1_000_000,
        binary_keys=1000,
        full_body_bytes=2_000_000_000,
        full_write_requests=100,
        sample_keys=100,
        sample_body_bytes=100_000,
        sample_write_requests=1,
        write_seconds=0.5,
        read_back_keys=100,
        read_back_seconds=0.2,
    )
    for name, value in changes.items():
        setattr(measured, name, value)
    return measured


def test_estimate_rto_scales_sample() -> None:
    estimate = estimate_rto(measurements(), (1200, 300.0))

    assert estimate is not None
    # by bytes: 2e9 * 0.5 / 1e5 = 10,000 s, more than 100 requests * 0.5 s
    assert estimate.write_seconds == pytest.approx(10_000)
    assert estimate.read_back_seconds == pytest.approx(2000)
    assert estimate.read_requests == 10_000 + 1000
    # 100 + 11,000 + 2 requests at 1200 per 300 s: 9 full windows wait
    assert estimate.api_budget_seconds == 9 * 300
    assert estimate.seconds == pytest.approx(40 + 10 + 12_000)


def test_estimate_rto_budget_floor() -> None:
    fast = measurements(write_seconds=0.001, read_back_seconds=0.001)

    estimate = estimate_rto(fast, (100, 60.0))

    assert estimate is not None
    assert estimate.api_budget_seconds == (11_102 - 1) // 100 * 60
    assert estimate.seconds == pytest.approx(50 + estimate.api_budget_seconds)


def test_estimate_rto_adds_consistency_wait_once() -> None:
    # One key of 100 stayed stale for 7 s: the wait is KV propagation time,
    # which does not grow with the number of keys restored.
    slow = measurements(read_back_seconds=0.05, consistency_wait_seconds=7.0)

    estimate = estimate_rto(slow, (1200, 300.0))

    assert estimate is not None
    assert estimate.read_back_seconds == pytest.approx(500)
    assert estimate.consistency_wait_seconds == pytest.approx(7.0)
    assert estimate.seconds == pytest.approx(40 + 10 + 10_000 + 500 + 7)


def test_rto_table_shows_consistency_wait() -> None:
    rto = RtoEstimate(
        seconds=1557.0,
        download_seconds=40.0,
        validate_seconds=10.0,
        write_seconds=1000.0,
        read_back_seconds=500.0,
        consistency_wait_seconds=7.0,
        api_budget_seconds=0.0,
        keys=1_000_000,
        body_bytes=2_000_000_000,
        write_requests=100,
        read_requests=10_000,
        rate_limit_requests=1200,
        rate_limit_window_seconds=300.0,
    )
    report = make_report(rto=rto)

    markdown, page = render_markdown(report), render_html(report)

    assert "| Read back 1,000,000 keys once in 10,000 requests" in markdown
    assert "(scaled from the sample) | 8 min 20 s |" in markdown
    assert "caught up (measured, not scaled) | 7.0 s |" in markdown
    assert '(measured, not scaled)</td><td class="num">7.0 s</td>' in page


def test_estimate_rto_of_every_key_is_measured() -> None:
    # --all: the drill wrote and read back every restorable key.
    whole = measurements(
        eligible_keys=100, full_body_bytes=100_400, full_write_requests=1
    )

    estimate = estimate_rto(whole, (1200, 300.0))

    assert estimate is not None
    assert estimate.measured_in_full is True
    assert estimate.write_seconds == 0.5  # as measured, not scaled by bytes
    assert estimate.read_back_seconds == 0.2
    rows = render_markdown(make_report(rto=estimate))
    assert "(measured on every key) | 500 ms |" in rows
    assert "(measured on every key) | 200 ms |" in rows
    assert "scaled from the sample" not in rows


def test_estimate_rto_of_a_sample_is_scaled() -> None:
    estimate = estimate_rto(measurements(), (1200, 300.0))

    assert estimate is not None
    assert estimate.measured_in_full is False
    assert (
        render_markdown(make_report(rto=estimate)).count("(scaled from the sample)")
        == 2
    )


def test_headline_counts_restored_equal_and_mismatched() -> None:
    counts = Counts(selected=5, written=5, checked=4, mismatched=1)

    text = headline(make_report(ok=False, counts=counts))

    assert text == "5 keys restored into a sandbox, 4 read back equal, 1 mismatched."


def test_headline_names_keys_missing_from_snapshot() -> None:
    counts = Counts(written=1, checked=1, mismatched=2, named_missing=2)
    report = make_report(ok=False, counts=counts, mode="keys-from")

    text = headline(report)
    markdown = render_markdown(report)

    assert text == (
        "1 key restored into a sandbox, 1 read back equal, 2 listed keys not in "
        "the snapshot."
    )
    assert "| Read back different | 0 |" in markdown
    assert "| Listed keys missing from the snapshot | 2 |" in markdown
    assert "of which 2 listed but not in the snapshot" in render_html(report)


def test_old_rto_estimate_decodes() -> None:
    report = make_report(
        rto=estimate_rto(measurements(), (1200, 300.0)),
    )
    document = msgspec.json.decode(render_json(report))
    del document["rto"]["consistency_wait_seconds"]
    del document["rto"]["measured_in_full"]

    decoded = msgspec.json.decode(msgspec.json.encode(document), type=DrillReport)

    assert decoded.rto is not None
    assert decoded.rto.consistency_wait_seconds == 0.0
    assert decoded.rto.measured_in_full is False


def test_estimate_rto_needs_writes() -> None:
    assert estimate_rto(measurements(sample_write_requests=0), (1200, 300.0)) is None
    assert estimate_rto(measurements(read_back_keys=0), (1200, 300.0)) is None


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install Debian's chromium package "
    "(apt-get install chromium) to render the drill report to a screenshot",
)
def test_html_renders_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(failed_report()))
    screenshot = tmp_path / "report.png"

    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert screenshot.is_file(), done.stderr
    assert png_size(screenshot) == (1200, 1600)
    # A blank page compresses to a few kilobytes; the report has text and colour.
    assert screenshot.stat().st_size > 30_000
