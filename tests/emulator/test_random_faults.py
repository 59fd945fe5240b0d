"""Random faults: rate, seed, kinds, stats, and each kind on the wire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvsnap.cli.emulator import parse_fault_kinds, parse_fault_rate
from kvsnap.emulator import EmulatorServer, Fault
from kvsnap.emulator.faults import FAULT_KINDS, RandomFaults
from kvsnap.errors import ConfigError

REQUESTS = 60


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start emulators with the given options; stops them after the test."""
    started: list[EmulatorServer] = []

    def make(**options: object) -> EmulatorServer:
        folder = tmp_path / f"emulator-{len(started)}"
        server = EmulatorServer(folder, **options).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def namespaces_url(server: EmulatorServer) -> str:
    return f"{server.base_url}/accounts/{server.account_id}/storage/kv/namespaces"


def outcomes(server: EmulatorServer, count: int = REQUESTS) -> list[str]:
    """Send `count` namespace lists one by one; return each status or error."""
    seen: list[str] = []
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(headers=headers, timeout=10) as client:
        for _ in range(count):
            try:
                seen.append(str(client.get(namespaces_url(server)).status_code))
            except httpx.TransportError as exc:
                seen.append(type(exc).__name__)
    return seen


def fast_kinds() -> list[str]:
    return [kind for kind in FAULT_KINDS if kind != "slow"]


def test_same_seed_same_faults(make_server) -> None:
    options = {"fault_rate": 0.4, "fault_seed": 7, "fault_kinds": fast_kinds()}
    first = outcomes(make_server(**options))
    second = outcomes(make_server(**options))

    assert first == second
    assert set(first) - {"200"}, "a rate of 0.4 over 60 requests injects faults"


def test_other_seed_other_faults(make_server) -> None:
    kinds = fast_kinds()
    first = outcomes(make_server(fault_rate=0.4, fault_seed=7, fault_kinds=kinds))
    second = outcomes(make_server(fault_rate=0.4, fault_seed=8, fault_kinds=kinds))

    assert first != second


def test_rate_zero_injects_nothing(make_server) -> None:
    server = make_server(fault_rate=0.0, fault_seed=1)

    assert outcomes(server) == ["200"] * REQUESTS
    assert server.stats()["faults"] == {}
    assert server.faults_fired == 0


@pytest.mark.parametrize("kind", ["429", "500", "502", "503"])
def test_rate_one_status_kind(make_server, kind: str) -> None:
    server = make_server(fault_rate=1.0, fault_seed=3, fault_kinds=[kind])

    assert outcomes(server, 10) == [kind] * 10
    assert server.stats()["faults"] == {kind: 10}
    assert server.stats()["statuses"] == {kind: 10}
    assert server.faults_fired == 10


def test_stats_count_faults_by_kind(make_server) -> None:
    server = make_server(fault_rate=0.5, fault_seed=11, fault_kinds=["500", "503"])

    seen = outcomes(server)
    stats = server.stats()

    assert stats["faults"].get("500", 0) == seen.count("500")
    assert stats["faults"].get("503", 0) == seen.count("503")
    assert sum(stats["faults"].values()) == REQUESTS - seen.count("200")
    assert server.faults_fired == REQUESTS - seen.count("200")
    assert set(stats["faults"]) <= {"500", "503"}


def test_stats_endpoint_serves_fault_counts(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["502"])
    outcomes(server, 3)

    served = httpx.get(f"{server.root_url}/__emulator/stats").json()
    reset = httpx.post(f"{server.root_url}/__emulator/stats/reset").json()

    assert served["faults"] == {"502": 3}
    assert reset["faults"] == {}


def test_control_endpoints_never_faulted(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["drop"])

    health = [httpx.get(f"{server.root_url}/__emulator/health") for _ in range(5)]

    assert [response.status_code for response in health] == [200] * 5
    assert server.stats()["faults"] == {}


def test_scripted_faults_take_precedence(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["500"])
    server.inject("GET namespaces", [Fault(status=418), None])

    assert outcomes(server, 3) == ["418", "200", "500"]
    assert server.stats()["faults"] == {"418": 1, "500": 1}


def test_429_has_retry_after_up_to_2_seconds(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=5, fault_kinds=["429"])
    headers = {"Authorization": f"Bearer {server.token}"}

    with httpx.Client(headers=headers, timeout=10) as client:
        answers = [client.get(namespaces_url(server)) for _ in range(20)]

    waits = {int(answer.headers["retry-after"]) for answer in answers}
    assert {answer.status_code for answer in answers} == {429}
    assert waits <= {0, 1, 2}
    assert len(waits) > 1, "20 draws pick more than one wait"
    assert answers[0].json()["errors"][0]["code"] == 971


def test_drop_closes_without_answer(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["drop"])
    headers = {"Authorization": f"Bearer {server.token}"}

    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(namespaces_url(server), headers=headers, timeout=10)
    assert server.stats()["statuses"] == {"drop": 1}


def test_truncate_cuts_the_real_answer(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["truncate"])
    headers = {"Authorization": f"Bearer {server.token}"}

    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            namespaces_url(server), headers=headers, json={"title": "t"}, timeout=10
        )
    # The request was handled before its answer was cut: the namespace exists.
    server.clear_faults()
    server.random_faults = None
    listed = httpx.get(namespaces_url(server), headers=headers, timeout=10).json()
    assert [ns["title"] for ns in listed["result"]] == ["t"]
    assert server.stats()["faults"] == {"truncate": 1}


def test_truncate_of_empty_body_announces_more(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["truncate"])
    # An empty value answers with an empty body; the cut one must still fail.
    server.random_faults = None
    headers = {"Authorization": f"Bearer {server.token}"}
    namespace = httpx.post(
        namespaces_url(server), headers=headers, json={"title": "t"}, timeout=10
    ).json()["result"]["id"]
    value_url = f"{namespaces_url(server)}/{namespace}/values/empty"
    assert httpx.put(value_url, headers=headers, content=b"").status_code == 200
    server.random_faults = RandomFaults(1.0, seed=1, kinds=["truncate"])

    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(value_url, headers=headers, timeout=10)


def test_slow_answers_after_a_delay(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["slow"])
    headers = {"Authorization": f"Bearer {server.token}"}

    started = time.monotonic()
    answer = httpx.get(namespaces_url(server), headers=headers, timeout=10)
    waited = time.monotonic() - started

    assert answer.status_code == 200
    assert answer.json()["success"] is True
    assert 1.0 <= waited < 3.5
    assert server.stats()["faults"] == {"slow": 1}


def test_slow_times_out_a_short_timeout(make_server) -> None:
    server = make_server(fault_rate=1.0, fault_seed=1, fault_kinds=["slow"])
    headers = {"Authorization": f"Bearer {server.token}"}

    with pytest.raises(httpx.ReadTimeout):
        httpx.get(namespaces_url(server), headers=headers, timeout=0.3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fault_rate": 1.5}, "outside 0 to 1"),
        ({"fault_rate": -0.1}, "outside 0 to 1"),
        ({"fault_rate": 0.1, "fault_kinds": ["404"]}, "unknown fault kind '404'"),
    ],
)
def test_constructor_rejects_bad_values(
    tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EmulatorServer(tmp_path, **options)


def test_parse_fault_kinds() -> None:
    assert parse_fault_kinds(None) == FAULT_KINDS
    assert parse_fault_kinds("all") == FAULT_KINDS
    assert parse_fault_kinds("429, drop") == ("429", "drop")


@pytest.mark.parametrize("text", ["", "404", "429,sloww", ","])
def test_parse_fault_kinds_rejects_bad_values(text: str) -> None:
    with pytest.raises(ConfigError, match="--faults") as caught:
        parse_fault_kinds(text)
    assert "expected a comma-separated list" in str(caught.value)


@pytest.mark.parametrize("value", [-0.5, 1.01])
def test_parse_fault_rate_rejects_bad_values(value: float) -> None:
    with pytest.raises(ConfigError, match=f"--fault-rate {value}"):
        parse_fault_rate(value)


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--fault-rate", "2", "--fault-rate 2.0"), ("--faults", "teapot", "'teapot'")],
)
def test_cli_invalid_fault_flag_exit_10(
    tmp_path: Path, flag: str, value: str, named: str
) -> None:
    command = [sys.executable, "-m", "kvsnap", "emulator", "--data", str(tmp_path)]
    done = subprocess.run(
        [*command, flag, value],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 10
    assert named in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_fault_flags_inject_faults(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kvsnap", "emulator", "--port", "0"]
    flags = ["--fault-rate", "1", "--fault-seed", "4", "--faults", "503"]
    process = subprocess.Popen(
        [*command, "--data", str(tmp_path), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip().split("=", 1)[1]
        account = process.stdout.readline().strip().split("=", 1)[1]
        token = process.stdout.readline().strip().split("=", 1)[1]
        answer = httpx.get(
            f"{base_url}/accounts/{account}/storage/kv/namespaces",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        root = base_url.removesuffix("/client/v4")
        stats = httpx.get(f"{root}/__emulator/stats", timeout=10).json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)

    assert answer.status_code == 503
    assert stats["faults"] == {"503": 1}
    assert process.returncode == 0
