"""Run wrangler commands against a private emulator, with loopback as the only network.

Usage, as root::

    unshare -n python tests/wrangler_sandbox.py PLAN.json RESULT.json

PLAN.json contains four fields. ``data_dir`` is the emulator's data folder,
which no other emulator may have open. ``workdir`` is wrangler's working
directory and home, and ``wrangler`` is its executable. ``commands`` is a list
of argument lists, each run as ``wrangler ARGS...`` with a time limit.
RESULT.json gets, for each command, its arguments, exit code, stdout as base64
(``kv key get`` prints raw bytes) and stderr as text. It also gets the
emulator's request counts by endpoint name (see `kvsnap.emulator.routing`), which
show the routes wrangler used.

The script exits with status 2, before it starts wrangler, when the network
namespace has any interface besides ``lo``: wrangler checks npm for updates
and may send metrics, and nothing here may reach another host.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from kvsnap.emulator import EmulatorServer

# A wrangler kv command took about 1 s on a 2-core machine, so one still
# running after 60 s is treated as hung.
COMMAND_TIMEOUT_SECONDS = 60


def wrangler_environment(server: EmulatorServer, workdir: Path) -> dict[str, str]:
    """Build wrangler's environment: the emulator's API, and workdir for its files."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CLOUDFLARE_", "CF_", "WRANGLER_"))
    }
    env |= {
        "CLOUDFLARE_API_BASE_URL": server.base_url,
        "CLOUDFLARE_ACCOUNT_ID": server.account_id,
        "CLOUDFLARE_API_TOKEN": server.token,
        "WRANGLER_HIDE_BANNER": "true",
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_SEND_ERROR_REPORTS": "false",
        "WRANGLER_LOG_PATH": str(workdir / "logs"),
        "WRANGLER_CACHE_DIR": str(workdir / "cache"),
        "WRANGLER_REGISTRY_PATH": str(workdir / "registry"),
        "HOME": str(workdir / "home"),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "XDG_CACHE_HOME": str(workdir / "cache"),
        "XDG_DATA_HOME": str(workdir / "data"),
        "XDG_STATE_HOME": str(workdir / "state"),
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
        "CI": "true",
    }
    return env


def run_command(
    wrangler: str, args: list[str], env: dict[str, str], workdir: Path
) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [wrangler, *args],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode("utf-8", "replace")
        return {
            "args": args,
            "returncode": None,
            "stdout_base64": base64.b64encode(exc.stdout or b"").decode("ascii"),
            "stderr": f"{stderr}\ntimed out after {COMMAND_TIMEOUT_SECONDS} s",
        }
    return {
        "args": args,
        "returncode": done.returncode,
        "stdout_base64": base64.b64encode(done.stdout).decode("ascii"),
        "stderr": done.stderr.decode("utf-8", "replace"),
    }


def enter_loopback_only() -> bool:
    """Bring up lo if it is the only network interface, else say why not.

    Returns False, after a message on stderr, when the process sees any
    other interface: wrangler must not reach beyond this machine.
    """
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        print(
            f"refusing to run wrangler: network interfaces {interfaces}, expected "
            "only lo; run this script under `unshare -n`",
            file=sys.stderr,
        )
        return False
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return True


def main(plan_path: str, result_path: str) -> int:
    if not enter_loopback_only():
        return 2

    plan = json.loads(Path(plan_path).read_text())
    workdir = Path(plan["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    with EmulatorServer(plan["data_dir"]) as server:
        env = wrangler_environment(server, workdir)
        runs = [
            run_command(plan["wrangler"], args, env, workdir)
            for args in plan["commands"]
        ]
        requests = server.stats()["requests"]
    Path(result_path).write_text(json.dumps({"runs": runs, "requests": requests}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: wrangler_sandbox.py PLAN.json RESULT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
