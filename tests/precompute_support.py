"""Helpers for tests that compare whole index databases built in different ways (one process
against torchrun ranks, killed-and-resumed against uninterrupted)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TIMES = {"started_at", "finished_at", "created_at", "updated_at"}
FLOAT_STATS = {"neurons": ("mean", "std")}  # merged across ranks: equal up to float rounding


def content(
    path: Path, skip: dict[str, tuple[str, ...]] | None = None
) -> tuple[dict[str, list[tuple]], dict[str, np.ndarray]]:
    """Every row of every table in insertion order (timestamps, run ids and the timing fields of
    stored settings left out), and the float statistics apart (compare those with a tolerance)."""
    con = sqlite3.connect(path)
    try:
        query = "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
        tables = [r[0] for r in con.execute(query)]
        rows: dict[str, list[tuple]] = {}
        floats: dict[str, np.ndarray] = {}
        for table in tables:
            cursor = con.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
            columns = [d[0] for d in cursor.description]
            left_out = set(TIMES) | set(FLOAT_STATS.get(table, ())) | set((skip or {}).get(table, ()))
            if table == "runs":
                left_out |= {"id", "state"}
            keep = [i for i, c in enumerate(columns) if c not in left_out]
            data = cursor.fetchall()
            rows[table] = [tuple(_clean(columns[i], row[i]) for i in keep) for row in data]
            if table in FLOAT_STATS:
                index = [columns.index(c) for c in FLOAT_STATS[table]]
                floats[table] = np.array([[row[i] for i in index] for row in data], dtype=float)
        return rows, floats
    finally:
        con.close()


def _clean(column: str, value: object) -> object:
    if column == "settings" and isinstance(value, str) and value.startswith("{"):
        settings = json.loads(value)
        return json.dumps({k: v for k, v in settings.items() if "second" not in k}, sort_keys=True)
    return value


def assert_same_content(
    got: Path, expected: Path, *, rtol: float = 1e-9, skip: dict[str, tuple[str, ...]] | None = None
) -> None:
    """Two index databases hold the same rows (statistics within ``rtol``; ``skip``: columns
    left out per table)."""
    rows_a, floats_a = content(got, skip)
    rows_b, floats_b = content(expected, skip)
    assert set(rows_a) == set(rows_b)
    for table in rows_b:
        assert rows_a[table] == rows_b[table], f"table {table} differs"
    for table in floats_b:
        np.testing.assert_allclose(floats_a[table], floats_b[table], rtol=rtol, atol=1e-12)


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """Environment for a child conceptscope process: this checkout, offline, ``threads`` threads."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
    }


def torchrun(nproc: int) -> list[str]:
    """The ``torchrun`` command of this environment (``--standalone``: a free local port)."""
    exe = Path(sys.executable).with_name("torchrun")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*base, "--standalone", f"--nproc-per-node={nproc}"]
