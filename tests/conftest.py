"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsnap.emulator import EmulatorServer

# The S3 server fixtures (rclone, moto, the fault proxy) and the webhook
# receiver live in their own modules.
pytest_plugins = ["tests.s3servers", "tests.webhooks"]


@pytest.fixture(autouse=True)
def _restore_kvsnap_logger() -> Iterator[None]:
    """Put the kvsnap logger back after each test.

    Tests that run the CLI in this process call `configure_logging`, which
    would change what later tests' caplog sees.
    """
    logger = logging.getLogger("kvsnap")
    saved = (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
    yield
    logger.handlers[:], logger.level, logger.propagate, logger.disabled = saved


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorServer]:
    """A started KV API emulator on a free port, with its data in tmp_path."""
    with EmulatorServer(tmp_path / "emulator") as server:
        yield server


@pytest.fixture
def cf_env(emulator: EmulatorServer) -> dict[str, str]:
    """The SDK's environment variables pointing at the emulator."""
    return {
        "CLOUDFLARE_API_TOKEN": emulator.token,
        "CLOUDFLARE_ACCOUNT_ID": emulator.account_id,
        "CLOUDFLARE_BASE_URL": emulator.base_url,
    }


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Skip tests marked slow unless `-m slow` selects them or KVSNAP_SLOW=1."""
    if os.environ.get("KVSNAP_SLOW") == "1" or "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `make test-slow` or KVSNAP_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
