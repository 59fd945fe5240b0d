"""The README's first command: `kvsnap demo` on a fresh folder."""

from __future__ import annotations

import os
from pathlib import Path

from kvsnap.seed import AUTH_NAMESPACE, TEXT_NAMESPACE, TZ_NAMESPACE, tz_entries
from tests.kvtools import records_by_key, run_cli, snapshots


def test_demo_backs_up_and_verifies(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}

    result = run_cli(["demo", "--dir", str(folder)], env)

    assert result.code == 0, result.stderr
    assert result.stdout.count(" ok ") == 3
    for title in (TZ_NAMESPACE, TEXT_NAMESPACE, AUTH_NAMESPACE):
        assert title in result.stdout
    assert str(folder / "repository") in result.stdout
    assert "error" not in result.stderr.lower()
    manifests = {m.namespace_title: m for m in snapshots(str(folder / "repository"))}
    assert set(manifests) == {TZ_NAMESPACE, TEXT_NAMESPACE, AUTH_NAMESPACE}
    paris = records_by_key(str(folder / "repository"), manifests[TZ_NAMESPACE])[
        "zoneinfo/Europe/Paris"
    ]
    expected = {e.key: e.value for e in tz_entries()}["zoneinfo/Europe/Paris"]
    assert paris.value_bytes() == expected
    assert expected.startswith(b"TZif")


def test_demo_repository_usable_afterwards(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    assert run_cli(["demo", "--dir", str(folder)], env).code == 0

    verify = run_cli(
        ["verify", "--read-data", "--repo", str(folder / "repository")], env
    )
    listed = run_cli(["snapshots", "--json", "--repo", str(folder / "repository")], env)

    assert verify.code == 0, verify.stderr
    assert listed.code == 0, listed.stderr
    assert listed.stdout.count('"namespace_title"') == 3
