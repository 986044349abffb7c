"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/parley*.service,
docs/DEPLOY.md) say what docs/DEPLOY.md promises, and keep up with the code: a renamed
setting or command, a new top-level package the image would miss, or a grace period longer
than the stop timeout fails here.

No Docker daemon or compose plugin is assumed (CI has neither): the compose file is read as
YAML, the Dockerfile as text. systemd's own `systemd-analyze verify` checks the units, and
the healthcheck commands are run against a local server.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from bots.cli import build_parser
from core.config import Settings
from tests.fakes.telegram_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
UNITS = [ROOT / "deploy" / "parley.service", ROOT / "deploy" / "parley@.service"]
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"

SETTINGS = {field.alias for field in Settings.model_fields.values() if field.alias}
EXAMPLE = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
DEFAULT_GRACE = Settings.model_fields["shutdown_grace"].default
# Variables of the deployment files that are not Parley settings: the compose file's own
# (DEPLOY_*, POSTGRES_*, COMPOSE_*), the template unit's platform list, and where
# platformdirs puts the data and cache folders.
DEPLOY_ONLY = re.compile(
    r"(DEPLOY|POSTGRES|COMPOSE)_[A-Z0-9_]+|RUN_PLATFORMS|XDG_(DATA|CACHE)_HOME"
)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def interpolate(text: str) -> str:
    """Compose's `${NAME:-default}` / `${NAME:?error}` with nothing set: the default."""
    return re.sub(r"\$\{([A-Z0-9_]+)(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(2) or "", text)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(interpolate(command)) if isinstance(command, str) else list(command)


def runners() -> dict[str, dict[str, Any]]:
    """The services that run `parley run`."""
    return {name: s for name, s in services().items() if command_of(s)[:2] == ["parley", "run"]}


def duration(text: str) -> float:
    """A compose duration ("45s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text}"
    return sum(float(number) * units[unit] for number, unit in parts)


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, in order (keys may repeat)."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [value for _, k, value in unit_entries(path) if k == key]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            word, _, rest = whole.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile_instructions() if word == name]


# --- compose ----------------------------------------------------------------------------------


def test_compose_has_postgres_a_migration_and_at_least_two_parley_processes() -> None:
    all_services = services()
    postgres = all_services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pgdata" in compose()["volumes"]

    migrate = all_services["migrate"]
    assert command_of(migrate) == ["parley", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}

    scaled = [name for name, service in runners().items() if "profiles" not in service]
    assert len(scaled) >= 2, "two processes by default, for rolling restarts"
    for name, service in runners().items():
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
        assert service["env_file"] == ".env", name
        assert service["restart"] == "unless-stopped", name


def test_compose_processes_stop_gracefully_and_never_migrate_themselves() -> None:
    for name, service in runners().items():
        environment = service["environment"]
        grace = float(environment.get("PARLEY_SHUTDOWN_GRACE", DEFAULT_GRACE))
        assert duration(service["stop_grace_period"]) > grace + 5, name
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
        assert environment["PARLEY_AUTO_MIGRATE"] == "false", name
        assert environment["PARLEY_HTTP_HOST"] == "0.0.0.0", name
        assert environment["DATABASE_URL"].startswith("postgresql://"), name
        assert "@postgres:5432/" in environment["DATABASE_URL"], name
        assert "/healthz" in " ".join(service["healthcheck"]["test"]), name


def test_telegram_polling_runs_in_exactly_one_process() -> None:
    """Telegram answers a second getUpdates poller with 409 Conflict: the services that run
    by default must not poll, and the one that does is a single replica behind a profile."""
    for name, service in runners().items():
        platforms = command_of(service)[2:]
        if "profiles" in service:
            assert platforms == ["telegram"], name
            assert service["deploy"]["replicas"] == 1, name
        else:
            assert platforms, f"{name}: `parley run` alone would start Telegram polling too"
            assert "telegram" not in platforms, name


def test_compose_publishes_each_process_on_its_own_local_port() -> None:
    published = []
    for name, service in runners().items():
        for port in service.get("ports", []):
            host, _, rest = str(port).partition(":")
            assert host == "127.0.0.1", f"{name}: the proxy on the host publishes, not Docker"
            published.append(rest.split(":")[0])
    assert len(published) == len(set(published)) >= 2


def test_compose_commands_are_parley_commands() -> None:
    parser = build_parser()
    for name, service in services().items():
        if name == "postgres":
            continue
        arguments = command_of(service)
        assert arguments[0] == "parley", name
        parser.parse_args(arguments[1:])  # exits (SystemExit) on an unknown command or platform


# --- settings named by the deployment files -----------------------------------------------------


def names_in(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text)) | set(
        re.findall(r"\b((?:PARLEY|SLACK|TELEGRAM|DISCORD|OPENAI)_[A-Z0-9_]+)", text)
    )


def test_every_variable_the_deployment_files_use_is_a_setting() -> None:
    """A renamed setting must be renamed here too: each name is a Parley setting listed in
    .env.example, or one of the deployment files' own."""
    used: dict[str, set[str]] = {}
    for name, service in services().items():
        if name != "postgres":
            used[f"compose {name}"] = set(service.get("environment", {}))
    used["compose.yaml"] = names_in(COMPOSE.read_text())
    for unit in UNITS:
        environment = " ".join(unit_values(unit, "Environment"))
        used[unit.name] = names_in(unit.read_text()) | set(
            re.findall(r"([A-Z][A-Z0-9_]*)=", environment)
        )
    used["Dockerfile"] = {
        name for name in names_in(DOCKERFILE.read_text()) if name.startswith("PARLEY_")
    }
    used["DEPLOY.md"] = names_in(DEPLOY_DOC.read_text())
    unknown = {
        where: sorted(
            name
            for name in names
            if not DEPLOY_ONLY.fullmatch(name) and (name not in SETTINGS or name not in EXAMPLE)
        )
        for where, names in used.items()
    }
    assert {where: names for where, names in unknown.items() if names} == {}


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_builds_in_two_stages_on_python_slim() -> None:
    assert "PYTHON_IMAGE=python:3.11-slim" in instruction("ARG")
    stages = instruction("FROM")
    assert len(stages) >= 2
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    assert any(arg.startswith("--from=builder ") for arg in instruction("COPY"))


def test_dockerfile_runs_as_a_non_root_user_and_stops_on_sigterm() -> None:
    users = instruction("USER")
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(instruction("CMD")[-1]) == ["parley", "run"]
    assert "/data" in " ".join(instruction("VOLUME"))


def test_dockerfile_installs_the_production_extras_without_a_pip_cache() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    arguments = dict(arg.split("=", 1) for arg in instruction("ARG") if "=" in arg)
    chosen = arguments["EXTRAS"].split(",")
    assert set(chosen) <= set(extras)
    assert {"slack", "discord", "telegram", "postgres", "http"} <= set(chosen)
    assert "local" not in chosen and arguments["WITH_LOCAL_MODEL"] == "false"
    runs = instruction("RUN")
    for run in runs:
        for command in re.split(r"&&|;", run):
            if re.search(r"\bpip3? (install|wheel)\b", command):
                assert "--no-cache-dir" in command, command
    assert any("pip install" in run for run in runs)


def test_dockerfile_copies_every_package_of_the_project() -> None:
    """A new top-level package must be copied into the build stage, or the image lacks it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = tool.get("package-dir", {})
    folders = {mapped.get(p.split(".")[0], p.split(".")[0]) for p in tool["packages"]}
    copied = {arg.split()[0].rstrip("/") for arg in instruction("COPY") if "--from" not in arg}
    assert folders <= copied, f"not copied: {sorted(folders - copied)}"
    assert {"pyproject.toml", "README.md"} <= {
        name for arg in instruction("COPY") for name in arg.split()[:-1]
    }


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in (".env", ".git", ".venv", "*.db", "tests"):
        assert pattern in ignored, pattern


# --- the healthchecks, run -------------------------------------------------------------------


@pytest.fixture
async def health_server() -> AsyncIterator[dict[str, Any]]:
    """A server answering /healthz with `state["status"]` on a free port."""
    state: dict[str, Any] = {"status": 200}

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(status=state["status"], text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state
    finally:
        await runner.cleanup()


async def exit_code(command: list[str], port: int) -> int:
    assert command[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={"PARLEY_HTTP_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


def healthchecks() -> dict[str, list[str]]:
    """Every healthcheck command that probes Parley, without the CMD prefix."""
    found = {}
    for name, service in runners().items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        found[f"compose {name}"] = test[1:]
    [docker] = instruction("HEALTHCHECK")
    found["Dockerfile"] = json.loads(docker.split(" CMD ", 1)[1])
    return found


async def test_the_healthchecks_pass_on_200_and_fail_otherwise(
    health_server: dict[str, Any],
) -> None:
    for where, command in healthchecks().items():
        health_server["status"] = 200
        assert await exit_code(command, health_server["port"]) == 0, where
        health_server["status"] = 503
        # Docker reads 1 as unhealthy (2 is reserved).
        assert await exit_code(command, health_server["port"]) == 1, where
    closed = free_port()  # nothing listens: a process that is gone
    for where, command in healthchecks().items():
        assert await exit_code(command, closed) == 1, where


# --- systemd ----------------------------------------------------------------------------------


def verified_copy(unit: Path, folder: Path) -> Path:
    """The unit as systemd-analyze can check it here: its /opt/parley binary replaced by this
    virtualenv's `parley` (verify insists the programs exist); a template as an instance."""
    parley = Path(sys.executable).parent / "parley"
    assert parley.exists(), parley
    copy = folder / unit.name
    copy.write_text(unit.read_text().replace("/opt/parley/bin/parley", str(parley)))
    if unit.name.endswith("@.service"):
        instance = folder / unit.name.replace("@.", "@1.")
        instance.symlink_to(copy.name)
        return instance
    return copy


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_analyze_verifies_the_unit(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd package) is needed for this test"
    copy = verified_copy(unit, tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for an unknown key or a bad value; it only prints them.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.0, security.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_the_unit_migrates_runs_and_stops_as_docs_deploy_says(unit: Path) -> None:
    def one(key: str) -> str:
        [value] = unit_values(unit, key)
        return value

    assert one("User") == "parley"
    assert one("ExecStartPre").split()[1:] == ["db", "upgrade"]
    start = one("ExecStart").split()
    assert start[:2] == ["/opt/parley/bin/parley", "run"]
    build_parser().parse_args([*start[1:2], *(a for a in start[2:] if not a.startswith("$"))])
    assert one("KillSignal") == "SIGTERM"
    assert float(one("TimeoutStopSec")) > DEFAULT_GRACE + 5
    assert one("Restart") == "on-failure"
    assert "/etc/parley/parley.env" in unit_values(unit, "EnvironmentFile")
    assert "PARLEY_AUTO_MIGRATE=false" in one("Environment").split()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert one(key) == value, key
    assert "/var/lib/parley" in one("ReadWritePaths").split()
    assert one("StateDirectory") == "parley"
