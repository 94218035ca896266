"""A throw-away PostgreSQL cluster for tests (Debian's ``postgresql`` package, no Docker).

``pg_cluster`` (session-scoped fixture, imported by ``conftest.py``): ``initdb`` in a fresh
temporary directory, a server listening only on a Unix socket in that directory (no TCP port to
collide with), durability off for speed (``fsync``, ``synchronous_commit``, ``full_page_writes``),
stopped and deleted at the end of the session. PostgreSQL refuses to run as root, so under root
(CI, containers) the cluster runs as the unprivileged ``nobody`` user.
``pg_url`` (function-scoped): a new, empty database on that cluster; its SQLAlchemy URL.

Tests that use them skip, with the reason, only when the server binaries are not installed
(``apt-get install postgresql``; ``scripts/setup.sh`` does it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

RUN_AS = "nobody"
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
}


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's layout)."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                      if Path(p).parent.name.isdigit() else 0, reverse=True)  # fmt: skip
    candidates += [Path(p) for p in versions]
    for bindir in candidates:
        if all((bindir / program).is_file() for program in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class PgCluster:
    """A running PostgreSQL server on a Unix socket in ``root``; superuser ``postgres``, trust auth."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # a short path: Unix socket paths are limited to ~107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="cs-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user: dict[str, object] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.root}'\n")
            for key, value in SERVER_SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.started = True

    def _pg(self, program: str, *args: str) -> None:
        result = subprocess.run([str(self.bindir / program), *args], capture_output=True, text=True,
                                cwd=self.root, timeout=120, **self._user)  # type: ignore[arg-type]
        if result.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}{log}")

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of ``database`` over the cluster's Unix socket."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=str(self.root), user="postgres", dbname="postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server for this test session (skips when the binaries are missing)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
                    "install Debian's postgresql package (scripts/setup.sh does)")
    cluster = PgCluster(bindir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    return pg_cluster.create_database()
