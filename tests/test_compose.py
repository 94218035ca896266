"""``docker-compose.yml``: each profile validated by ``docker-compose config`` (Debian's package).

``config`` parses, validates and normalises the file (no Docker daemon needed). Checked per
profile: which services run; the default serves the demo on SQLite; ``postgres`` starts the
database, then migrations, then the precompute job, then the explorer on PostgreSQL, in that
order; ``gpu`` reserves NVIDIA GPUs. Also the Dockerfile's commands exist in the CLI.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import DEMO_STAGES, build_parser

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
PG_URL = "postgresql+psycopg://conceptscope:conceptscope@db:5432/conceptscope"


def compose_config(profile: str | None) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose; scripts/setup.sh does)")
    args = [binary, "-f", str(COMPOSE), *(["--profile", profile] if profile else []), "config"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # no CONCEPTSCOPE_* / POSTGRES_* from the caller
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def active(config: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """The services ``up`` starts with ``profile`` (those without profiles, or with it)."""
    return {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or (profile is not None and profile in service["profiles"])
    }


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return value.split() if isinstance(value, str) else list(value)


def test_default_profile_serves_the_demo_on_sqlite() -> None:
    config = compose_config(None)
    services = active(config, None)
    assert set(services) == {"explorer"}
    explorer = services["explorer"]
    assert "command" not in explorer  # the image's CMD: conceptscope demo --db /data/demo.db
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'CMD ["conceptscope", "demo", "--db", "/data/demo.db", "--host", "0.0.0.0"' in dockerfile
    assert any(str(v).startswith("data:/data") for v in explorer["volumes"])
    assert [(int(p["published"]), int(p["target"])) for p in explorer["ports"]] == [(8000, 8000)]
    assert "CONCEPTSCOPE_DB" not in explorer.get("environment", {})


def test_postgres_profile_runs_migrations_then_precompute_then_the_explorer() -> None:
    config = compose_config("postgres")
    services = active(config, "postgres")
    assert {"db", "migrate", "precompute", "explorer-pg"} <= set(services)
    assert "explorer-gpu" not in services
    db = services["db"]
    assert db["image"].startswith("postgres:") and "pg_isready" in db["healthcheck"]["test"]
    migrate, job, explorer = services["migrate"], services["precompute"], services["explorer-pg"]
    assert command(migrate) == ["conceptscope", "db", "upgrade"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert job["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert explorer["depends_on"] == {"precompute": {"condition": "service_completed_successfully"}}
    for service in (migrate, job):
        assert service["environment"]["CONCEPTSCOPE_DB"] == PG_URL
    script = " ".join(command(job)).replace("$$", "$")  # config keeps the file's escaping
    stages = [line.split()[2] for line in command(job)[-1].strip().splitlines()]
    assert stages == [stage[1] for stage in DEMO_STAGES]  # what `conceptscope demo` runs, in order
    assert '--db "$CONCEPTSCOPE_DB"' in script  # $$ in the file: the container's variable
    argv = command(explorer)
    assert argv[:2] == ["conceptscope", "serve"] and argv[argv.index("--db") + 1] == PG_URL
    # every command the profile runs parses with this CLI
    parser = build_parser()
    parser.parse_args(command(migrate)[1:])
    parser.parse_args(argv[1:])
    for line in command(job)[-1].strip().splitlines():
        parser.parse_args([w.strip('"') for w in line.replace("$$", "$").split()[1:]])


def test_gpu_profile_passes_the_gpu_through() -> None:
    config = compose_config("gpu")
    services = active(config, "gpu")
    assert set(services) == {"explorer", "explorer-gpu"}
    gpu = services["explorer-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu["environment"]["CONCEPTSCOPE_DEVICE"] == "cuda"
    assert "pypi.org" in gpu["build"]["args"]["TORCH_INDEX_URL"]  # CUDA wheels
    assert 'ARG TORCH_INDEX_URL=' in (REPO / "Dockerfile").read_text()


def test_password_and_hosts_come_from_the_environment() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose; scripts/setup.sh does)")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "POSTGRES_PASSWORD": "s3cret",
           "CONCEPTSCOPE_TRUSTED_HOSTS": "explorer.example.org"}  # fmt: skip
    result = subprocess.run([binary, "-f", str(COMPOSE), "--profile", "postgres", "config"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    secret_url = PG_URL.replace(":conceptscope@", ":s3cret@")
    assert services["migrate"]["environment"]["CONCEPTSCOPE_DB"] == secret_url
    assert services["explorer-pg"]["environment"]["CONCEPTSCOPE_TRUSTED_HOSTS"] == "explorer.example.org"
