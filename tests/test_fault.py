"""Fault test: every resumable precompute stage, SIGKILLed at a random point and resumed, gives
the same database as an uninterrupted run (the activations stage's own kill test,
``tests/test_activations.py::test_a_killed_process_resumes_to_the_same_database``, is the same
harness; it also runs here with the shared settings).

Each stage runs in a real child process (slowed down a little so the kill lands mid-way, with
checkpoints as often as possible); once it has saved some progress the parent waits a
random moment and kills it with SIGKILL, resumes the same stage in-process, and compares every
row of the database with a run that was never interrupted (same thread count, same settings).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.precompute_support import ROOT, assert_same_content

VOCAB = [f"{colour} {shape}" for colour in ("red", "green", "blue")
         for shape in ("circle", "square", "star", "cross", "triangle", "heart", "moon", "ring")]  # fmt: skip
EMBED_BATCH = 4  # labels: small embedding batches, a checkpoint after each


def run_stage(stage: str, url: str, loaded=None) -> object:
    """Run ``stage`` with the tiny settings of this test (the same in child and parent)."""
    if loaded is None:
        from app.models import ModelSpec, load_model

        loaded = load_model(ModelSpec.parse("demo"), "cpu")
    if stage == "activations":
        from precompute.activations import run_activations
        from precompute.datasets import DemoDataset

        return run_activations(loaded, DemoDataset(64), url, top_k=4, batch_size=8, sample_size=16,
                               checkpoint_batches=1, checkpoint_min_seconds=0, progress=False)  # fmt: skip
    if stage == "featurevis":
        from precompute.featurevis import run_featurevis

        return run_featurevis(url, loaded=loaded, units=set(range(4)), steps=2, size=32, batch=4,
                              diversity=2, progress=False)  # fmt: skip
    if stage == "words":
        from precompute.words import run_words

        return run_words(url, loaded=loaded, vocab=VOCAB, top=3, batch=4, progress=False)
    if stage == "labels":
        from precompute import labels

        return labels.run_labels(url, options=labels.LabelsOptions(progress=False), loaded=loaded)
    raise ValueError(stage)


def slow_down(stage: str) -> None:
    """Make the child slow enough to be killed mid-way, and checkpoint as often as it can."""

    def slowly(fn, seconds):
        def wrapped(*args, **kwargs):
            time.sleep(seconds)
            return fn(*args, **kwargs)

        return wrapped

    if stage == "activations":
        from precompute.datasets import DemoDataset

        DemoDataset.load = slowly(DemoDataset.load, 0.02)
    elif stage == "featurevis":
        from precompute import featurevis

        featurevis.render_batch = slowly(featurevis.render_batch, 0.2)
    elif stage == "words":
        from precompute import words

        words.CHECKPOINT_SECONDS = 0.0
        words.word_values = slowly(words.word_values, 0.2)
    elif stage == "labels":
        from sqlalchemy.orm import Session

        from precompute import labels

        # the demo's ground truth labels every layer: no image embeddings to checkpoint; the
        # stage then writes layer by layer, so every commit is slowed to land kills around them
        labels.EMBED_BATCH, labels.CHECKPOINT_EVERY = EMBED_BATCH, 1
        Session.commit = slowly(Session.commit, 0.3)


CHILD = """
import sys
import torch
torch.set_num_threads(int(sys.argv[3]))  # the parent's thread count: same floats, bit for bit
from tests.test_fault import run_stage, slow_down
slow_down(sys.argv[1])
run_stage(sys.argv[1], sys.argv[2])
"""

# How far a stage must have got (a checkpoint or stored rows) before it is killed, and whether
# it is finished (the kill must come before that).
PROGRESS = {
    "activations": "SELECT json_extract(progress, '$.position') FROM runs WHERE stage = 'activations'",
    "featurevis": "SELECT count(*) FROM feature_visualizations",
    "words": "SELECT json_extract(progress, '$.position') FROM runs WHERE stage = 'words' AND state NOTNULL",
    "labels": "SELECT count(*) FROM runs WHERE stage = 'labels'",
}
ENOUGH = {"activations": 16, "featurevis": 4, "words": 8, "labels": 1}
DELAY = {"activations": 0.3, "featurevis": 0.3, "words": 0.3, "labels": 1.5}  # random kill within
DONE = "SELECT count(*) FROM runs WHERE stage = ? AND status = 'done'"


def _query(path: Path, sql: str, *args) -> int:
    try:
        con = sqlite3.connect(path, timeout=1)
        try:
            row = con.execute(sql, args).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return -1
    return int(row[0]) if row and row[0] is not None else -1


def _fv_complete(path: Path) -> bool:
    return _query(path, "SELECT count(*) FROM feature_visualizations") >= 2 * 4 * 2 + 4 * 2


def _kill_mid_way(stage: str, path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    log = path.with_suffix(".log").open("w")
    import torch

    threads = str(torch.get_num_threads())  # the resumed and straight runs use this process's
    proc = subprocess.Popen([sys.executable, "-c", CHILD, stage, f"sqlite:///{path}", threads], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _query(path, PROGRESS[stage]) < ENOUGH[stage] and proc.poll() is None:
            assert time.monotonic() < deadline, "the stage made no progress in 300 s"
            time.sleep(0.05)
        time.sleep(random.uniform(0, DELAY[stage]))  # anywhere: mid-batch, mid-checkpoint, mid-commit
        if proc.poll() is not None:
            pytest.fail(f"ended before the kill: {path.with_suffix('.log').read_text()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    finished = _fv_complete(path) if stage == "featurevis" else _query(path, DONE, stage) > 0
    assert not finished, "killed after the stage had finished"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["activations", "featurevis", "words", "labels"])
def test_a_stage_killed_at_a_random_point_resumes_to_the_same_database(
    stage, tmp_path, tiny_db, demo_loaded, monkeypatch
):
    from precompute import labels

    monkeypatch.setattr(labels, "EMBED_BATCH", EMBED_BATCH)  # as in the child
    killed, straight = tmp_path / "killed.db", tmp_path / "straight.db"
    if stage != "activations":  # the later stages start from an indexed database
        shutil.copy(tiny_db.path, killed)
        shutil.copy(tiny_db.path, straight)
    _kill_mid_way(stage, killed)

    resumed = run_stage(stage, f"sqlite:///{killed}", demo_loaded)
    if stage in ("activations", "words"):
        assert resumed.status == "done"
    run_stage(stage, f"sqlite:///{straight}", demo_loaded)
    assert_same_content(killed, straight, rtol=0)

    con = sqlite3.connect(killed)  # the comparison covered real content
    rows = {"activations": "top_examples", "featurevis": "feature_visualizations", "words": "neuron_words",
            "labels": "labels"}[stage]  # fmt: skip
    assert con.execute(f"SELECT count(*) FROM {rows}").fetchone()[0] > 0
    status = con.execute("SELECT status, progress FROM runs WHERE stage = ?", (stage,)).fetchall()
    con.close()
    assert [s for s, _ in status] == ["done"], status  # every stage keeps one runs row (precompute.runs)
    assert json.loads(status[0][1])
    if stage == "featurevis":  # its progress counts complete neurons (the stored images are its state)
        assert json.loads(status[0][1]) == {"neurons_done": 8, "neurons": 8}
