"""torchrun: two gloo ranks (real processes) write the same index as one process.

The activations stage reads webdataset shards (each rank takes its own shards); words and
feature visualization split their batches over the ranks. Top-k ids, values and heatmaps,
samples, thumbnails, words and visualizations must be equal; means and standard deviations
(merged by Chan's formula) equal within float rounding. Every process computes with one thread
(as torchrun sets it), so a batch gives the same values in either run.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.precompute_support import ROOT, assert_same_content, subprocess_env, torchrun

TOP_K, BATCH, SAMPLE = 8, 8, 20
VOCAB = ["red", "green", "blue", "circle", "square", "star", "cat", "dog", "purple", "the"]
FV = {"units": {0, 1, 2}, "steps": 2, "size": 32, "batch": 4, "diversity": 2}

GATE = """
import os, sys, time
from pathlib import Path

def wait_for_release():  # rank 1 holds here, before the end of its share, until the test lets it go
    while os.environ["RANK"] == "1" and not Path(sys.argv[2], "release").exists():
        time.sleep(0.02)
"""  # the first lines of every killable rank script (its argv[2] is the test's folder)


def progress_of(db: Path, stage: str, key: str) -> int:
    """``progress[key]`` of the run row of ``stage`` in the SQLite file ``db``; -1 while unreadable."""
    if not db.exists():  # connecting would create it
        return -1
    try:
        con = sqlite3.connect(db, timeout=1)
        try:
            row = con.execute(f"SELECT json_extract(progress, '$.{key}') FROM runs WHERE stage = ?",
                              (stage,)).fetchone()  # fmt: skip
        finally:
            con.close()
    except sqlite3.Error:
        return -1
    return int(row[0]) if row and row[0] is not None else -1


def kill_rank_one_mid_way(
    command: list[str], env: dict[str, str], out: Path, ready: Callable[[], bool]
) -> None:
    """Run the torchrun job until ``ready()``, then SIGKILL rank 1 and check torchrun stops the job.

    Rank 1's script waits at ``GATE`` before the end of its share until ``out/release`` exists, so
    the kill always lands mid-way (never after rank 1 finished and rank 0 merged), whatever the
    machine's load; the moment within that window is random. Creates the release file at the end,
    so the same command then runs through.
    """
    import os
    import random
    import signal
    import time

    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not ready() and job.poll() is None:
            assert time.monotonic() < deadline, "rank 1 made no progress"
            time.sleep(0.05)
        time.sleep(random.uniform(0, 0.2))
        assert job.poll() is None, job.stderr.read().decode()[-3000:]  # the job must still run
        os.kill(int((out / "rank1.pid").read_text()), signal.SIGKILL)  # one rank dies ...
        assert job.wait(timeout=120) != 0  # ... and torchrun stops the job
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        job.stderr.close()
    (out / "release").touch()


RANK_SCRIPT = """
import sys
from precompute.featurevis import run_featurevis
from precompute.words import run_words
url, vocab = sys.argv[1], sys.argv[2].split(",")
run_words(url, vocab=vocab, top=3, batch=3, device="cpu", progress=False)
run_featurevis(url, units={0, 1, 2}, steps=2, size=32, batch=4, diversity=2, device="cpu", progress=False)
"""


@pytest.mark.slow
def test_two_gloo_ranks_write_the_same_index_as_one_process(tmp_path, demo_loaded):
    from precompute.activations import run_activations
    from precompute.featurevis import run_featurevis
    from precompute.shard_writer import write_shards
    from precompute.summaries import run_summaries
    from precompute.words import run_words

    spec, n, n_shards = write_shards("demo:48", tmp_path / "shards", 12)
    assert (n, n_shards) == (48, 4)

    one = tmp_path / "one.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        url = f"sqlite:///{one}"
        kwargs = {"top_k": TOP_K, "batch_size": BATCH, "sample_size": SAMPLE, "progress": False}
        run_activations(demo_loaded, spec, url, **kwargs)
        run_summaries(url, "demo", log=False)  # as the CLI does after the pass
        run_words(url, loaded=demo_loaded, vocab=VOCAB, top=3, batch=3, progress=False)
        run_featurevis(url, loaded=demo_loaded, progress=False, **FV)
    finally:
        torch.set_num_threads(threads)

    two = tmp_path / "two.db"
    env = subprocess_env(threads=1)
    activations = [
        "-m", "app.cli", "precompute", "activations", "--model", "demo", "--dataset", spec,
        "--db", str(two), "--top-k", str(TOP_K), "--batch-size", str(BATCH), "--sample", str(SAMPLE),
        "--device", "cpu", "--workers", "1", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run([*torchrun(2), *activations], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "indexed 48 of 48 images" in done.stdout  # rank 0 reports the whole job, once
    assert done.stdout.count("indexed") == 1
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    done = subprocess.run(
        [*torchrun(2), str(script), f"sqlite:///{two}", ",".join(VOCAB)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    con = sqlite3.connect(two)
    stages = sorted(r[0] for r in con.execute("SELECT stage FROM runs"))
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("top_examples", "neuron_words", "feature_visualizations")}  # fmt: skip
    con.close()
    assert "activations" in stages and "words" in stages
    assert stages.count("featurevis") == 1  # rank 0 alone keeps the stage's row
    assert not [stage for stage in stages if "@" in stage]  # the ranks' part rows are gone
    assert counts["top_examples"] > 0 and counts["neuron_words"] > 0
    assert counts["feature_visualizations"] == 2 * 3 * 2 + 3 * 2  # pos+neg per unit and layer, diversity
    # page summaries (issue 15) are derived from the merged statistics: equal up to their rounding
    assert_same_content(two, one, skip={"neuron_summaries": ("data",)})


def test_topk_merge_and_chan_merge_are_exact():
    from precompute.distributed import chan_merge, merge_topk

    generator = torch.Generator().manual_seed(0)
    n, units, k = 40, 5, 6
    values = torch.randint(0, 8, (n, units), generator=generator).float()  # many ties
    maps = torch.randn(n, units, 2, 2, generator=generator)
    positions = torch.arange(n)
    shares = [positions[r::3] for r in range(3)]  # three ranks, interleaved positions

    def topk(share: torch.Tensor):  # one rank's lists (value desc, position asc), as a pass keeps them
        v = values[share].T  # (U, len), positions ascending
        o = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
        kept_maps = maps[share].transpose(0, 1).gather(1, o[..., None, None].expand(-1, -1, 2, 2))
        return v.gather(1, o), share[o], kept_maps

    parts = [topk(p) for p in shares]
    v, p, m = merge_topk([x[0] for x in parts], [x[1] for x in parts], [x[2] for x in parts], k)
    for u in range(units):
        expected = sorted(range(n), key=lambda i: (-values[i, u].item(), i))[:k]
        assert p[u].tolist() == expected
        assert v[u].tolist() == values[expected, u].tolist()
        assert torch.equal(m[u], maps[expected, u])

    data = torch.randn(n, units, dtype=torch.float64, generator=generator) * 3 + 1
    count, mean, m2 = 0, torch.zeros(units, dtype=torch.float64), torch.zeros(units, dtype=torch.float64)
    for chunk in (data[:7], data[7:8], data[8:30], data[30:]):
        c_mean = chunk.mean(0)
        count, mean, m2 = chan_merge(count, mean, m2, len(chunk), c_mean, (chunk - c_mean).square().sum(0))
    assert count == n
    torch.testing.assert_close(mean, data.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m2 / n, data.var(0, unbiased=False), rtol=1e-12, atol=1e-12)


KILLABLE_RANK = """
import os, sys, time
from pathlib import Path
from app.models import ModelSpec
from precompute.activations import run_activations
from precompute.datasets import DemoDataset

Path(sys.argv[2]).joinpath(f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))


class SlowDemo(DemoDataset):  # slow storage: the job takes long enough to be killed mid-way
    def load(self, position):
        time.sleep(0.02)
        if position >= 88:  # rank 1's last batch
            wait_for_release()
        return super().load(position)

report = run_activations(ModelSpec.parse("demo"), SlowDemo(96), sys.argv[1], top_k=4, batch_size=8,
                         sample_size=24, checkpoint_batches=1, checkpoint_min_seconds=0, progress=False)
Path(sys.argv[2]).joinpath(f"rank{os.environ['RANK']}.batches").write_text(str(report.batches_run))
"""


@pytest.mark.slow
def test_a_killed_rank_restarted_resumes_to_the_same_index(tmp_path, demo_loaded):
    from precompute.activations import run_activations
    from precompute.datasets import DemoDataset

    script, db = tmp_path / "rank.py", tmp_path / "killed.db"
    script.write_text(GATE + KILLABLE_RANK)
    command = [*torchrun(2), str(script), f"sqlite:///{db}", str(tmp_path)]
    env = subprocess_env(threads=1)

    def position() -> int:
        return progress_of(db, "activations@1/2", "position")

    kill_rank_one_mid_way(command, env, tmp_path, lambda: position() >= 3 * 8)
    at = position()
    assert 3 * 8 <= at <= 88, at  # rank 1's batches start at 8, 24, ..., 88; it is held before 88

    restarted = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)  # same command
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    # rank 1 went on from its checkpoint (its share is 6 of the 12 batches)
    assert int((tmp_path / "rank1.batches").read_text()) == 6 - at // 16

    straight = tmp_path / "straight.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_activations(demo_loaded, DemoDataset(96), f"sqlite:///{straight}", top_k=4, batch_size=8,
                        sample_size=24, progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert_same_content(db, straight)


LABELS_SCRIPT = """
import sys
from precompute.labels import LabelsOptions, run_labels
for url in sys.argv[1:]:
    run_labels(url, options=LabelsOptions(top=4, k=2, progress=False), device="cpu")
"""


@pytest.mark.slow
def test_two_gloo_ranks_label_like_one_process(tmp_path, demo_loaded):
    """The labels stage under torchrun (rank 0 drives; embeddings, word renderings and per-unit
    evidence spread over the ranks) writes the same labels, evidence, multimodality rows and
    concept profiles as one process: on the demo's ground-truth tags, and on an image folder
    (no ground truth: every image is embedded for zero-shot tags)."""
    import shutil

    from precompute.activations import run_activations
    from precompute.datasets import DemoDataset
    from precompute.labels import LabelsOptions, run_labels

    folder = tmp_path / "images"
    folder.mkdir()
    demo = DemoDataset(72)
    for position in range(len(demo)):
        item = demo.load(position)
        if item.image is not None:
            item.image.save(folder / f"{position:03d}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ones, twos = [], []
    try:
        for name, source in (("truth", "demo:96"), ("folder", str(folder))):
            base = tmp_path / f"{name}.db"
            run_activations(demo_loaded, source, f"sqlite:///{base}", top_k=6, batch_size=16, sample_size=96,
                            progress=False)  # fmt: skip
            one, two = tmp_path / f"{name}-one.db", tmp_path / f"{name}-two.db"
            shutil.copy(base, one)
            shutil.copy(base, two)
            run_labels(f"sqlite:///{one}", options=LabelsOptions(top=4, k=2, progress=False),
                           device="cpu", loaded=demo_loaded)  # fmt: skip
            ones.append(one)
            twos.append(two)
    finally:
        torch.set_num_threads(threads)

    script = tmp_path / "labels.py"
    script.write_text(LABELS_SCRIPT)
    done = subprocess.run([*torchrun(2), str(script), *(f"sqlite:///{p}" for p in twos)], cwd=ROOT,
                          env=subprocess_env(threads=1), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    for one, two in zip(ones, twos, strict=True):
        con = sqlite3.connect(two)
        tables = ("labels", "label_evidence", "unit_multimodality", "concept_profiles", "images")
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        progress, status = con.execute("SELECT progress, status FROM runs WHERE stage = 'labels'").fetchone()
        con.close()
        assert all(counts.values()), (two.name, counts)
        assert status == "done"
        if "folder" in two.name:  # every image was embedded (zero-shot tags), by both ranks
            assert json.loads(progress)["embedded"] == counts["images"] > 48, progress
        assert_same_content(two, one)


PG_RANK_SCRIPT = """
import os, sys
from app.models import ModelSpec
from precompute.activations import run_activations
from precompute.labels import LabelsOptions, run_labels
from precompute.summaries import run_summaries
from precompute.words import run_words
from precompute import distributed
spec, url, vocab = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
run_activations(ModelSpec.parse("demo"), spec, url, top_k=6, batch_size=12, sample_size=60, progress=False)
ctx = distributed.context()
if ctx.is_writer:  # summaries split no work: rank 0 only, as the CLI runs it
    run_summaries(url, "demo", log=False)
distributed.barrier(ctx)
run_words(url, vocab=vocab, top=3, batch=3, device="cpu", progress=False)
run_labels(url, options=LabelsOptions(top=4, k=2, progress=False), device="cpu")
"""


@pytest.mark.slow
def test_sharded_two_rank_run_into_postgresql_equals_the_sqlite_index(tmp_path, demo_loaded, pg_url):
    """Issue 17's check in small: demo:60 as webdataset shards, 2 gloo ranks into PostgreSQL, against
    one process over demo:60 into SQLite; ``bench/compare_indexes.py`` finds them equal unit by unit."""
    from bench.compare_indexes import main as compare
    from precompute.activations import run_activations
    from precompute.labels import LabelsOptions, run_labels
    from precompute.shard_writer import write_shards
    from precompute.summaries import run_summaries
    from precompute.words import run_words

    spec, n, _ = write_shards("demo:60", tmp_path / "shards", 16)
    assert n == 60
    script = _script(tmp_path, PG_RANK_SCRIPT)
    done = subprocess.run([*torchrun(2), str(script), spec, pg_url, ",".join(VOCAB)], cwd=ROOT,
                          env=subprocess_env(threads=1), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    url = f"sqlite:///{tmp_path / 'one.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_activations(demo_loaded, "demo:60", url, top_k=6, batch_size=12, sample_size=60, progress=False)
        run_summaries(url, "demo", log=False)
        run_words(url, loaded=demo_loaded, vocab=VOCAB, top=3, batch=3, progress=False)
        options = LabelsOptions(top=4, k=2, progress=False)
        run_labels(url, options=options, device="cpu", loaded=demo_loaded)
    finally:
        torch.set_num_threads(threads)

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compare([pg_url, url])
    report = out.getvalue()
    assert "labels: 0 compared" not in report and "evidence: 0 compared" not in report, report
    assert report.strip().splitlines()[-1].startswith("indexes equal: yes"), report
    assert code == 0


def _script(folder, text: str):
    path = folder / "script.py"
    path.write_text(text)
    return path


SHARE_MAP_SCRIPT = """
from precompute import distributed as d
def square(shared, x):
    return shared, x * x, d.env_context().rank
ctx = d.context()
if ctx.is_writer:
    out = d.share_map(square, list(range(7)), "s", ctx)
    assert [o[1] for o in out] == [i * i for i in range(7)], out  # item order
    assert [o[2] for o in out] == [i % 2 for i in range(7)], out  # every rank computed its share
    assert {o[0] for o in out} == {"s"} and d.share_map(square, [], "s", ctx) == []
    d.stop_maps(ctx)
    print("rank 0 ok")
else:
    print("rank 1 served", d.serve_maps(ctx))
"""


@pytest.mark.slow
def test_share_map_deals_items_to_every_rank_and_keeps_their_order(tmp_path):
    """The mechanism of the distributed labels stage: rank 0 maps, rank 1 serves until stopped."""
    script = _script(tmp_path, SHARE_MAP_SCRIPT)
    done = subprocess.run([*torchrun(2), str(script)], cwd=ROOT, env=subprocess_env(threads=1),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 ok" in done.stdout and "rank 1 served 2" in done.stdout, done.stdout


KILLABLE_LABELS = """
import os, sys, time
from pathlib import Path
import precompute.labels as labels
import precompute.labels_distributed as shared
out, rank = Path(sys.argv[2]), os.environ["RANK"]
out.joinpath(f"rank{rank}.pid").write_text(str(os.getpid()))
labels.EMBED_BATCH, labels.CHECKPOINT_EVERY = 4, 1  # a checkpoint after every round of 2 x 4 images
encoded, real = 0, shared._encode

def slow_encode(spec, images):  # slow enough to be killed mid-way; counts what this rank encodes
    global encoded
    time.sleep(0.25)
    if encoded >= 16:  # rank 1 has encoded its share of 4 rounds
        wait_for_release()
    encoded += len(images)
    out.joinpath(f"rank{rank}.encoded").write_text(str(encoded))
    return real(spec, images)

shared._encode = slow_encode
labels.run_labels(sys.argv[1], options=labels.LabelsOptions(top=4, k=2, progress=False), device="cpu")
"""


@pytest.mark.slow
def test_a_killed_labels_rank_restarted_resumes_to_the_same_labels(tmp_path, demo_loaded, monkeypatch):
    """Labels under torchrun on an image folder (zero-shot tags: every image is embedded, the
    embeddings checkpointed by rank 0 after each round): rank 1 SIGKILLed mid-way, the same command
    run again embeds only what the checkpoint lacks and writes the same rows as one process."""
    import shutil

    import precompute.labels as labels
    from precompute.activations import run_activations
    from precompute.datasets import DemoDataset

    folder = tmp_path / "images"
    folder.mkdir()
    demo = DemoDataset(72)
    for position in range(len(demo)):
        item = demo.load(position)
        if item.image is not None:
            item.image.save(folder / f"{position:03d}.png")
    base, db, straight = tmp_path / "base.db", tmp_path / "killed.db", tmp_path / "straight.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_activations(demo_loaded, str(folder), f"sqlite:///{base}", top_k=6, batch_size=16, sample_size=72,
                        progress=False)  # fmt: skip
        shutil.copy(base, db)
        shutil.copy(base, straight)
        monkeypatch.setattr(labels, "EMBED_BATCH", 4)  # the same batches as the ranks encode
        options = labels.LabelsOptions(top=4, k=2, progress=False)
        labels.run_labels(f"sqlite:///{straight}", options=options, device="cpu", loaded=demo_loaded)
    finally:
        torch.set_num_threads(threads)
    n_images = sqlite3.connect(base).execute("SELECT count(*) FROM images").fetchone()[0]

    def embedded() -> int:
        return progress_of(db, "labels", "embedded")

    script = tmp_path / "labels_rank.py"
    script.write_text(GATE + KILLABLE_LABELS)
    command = [*torchrun(2), str(script), f"sqlite:///{db}", str(tmp_path)]
    env = subprocess_env(threads=1)
    kill_rank_one_mid_way(command, env, tmp_path, lambda: embedded() >= 16)
    at = embedded()
    assert 16 <= at <= 32 < n_images, (at, n_images)  # rank 1 is held after 4 rounds of 2 x 4 images

    for rank in (0, 1):
        (tmp_path / f"rank{rank}.encoded").unlink(missing_ok=True)
    restarted = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)  # same command
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    again = sum(int(p.read_text()) for p in tmp_path.glob("rank*.encoded"))
    assert again == n_images - at, (again, n_images, at)  # only what the checkpoint lacked
    con = sqlite3.connect(db)
    progress, status = con.execute("SELECT progress, status FROM runs WHERE stage = 'labels'").fetchone()
    con.close()
    assert status == "done" and json.loads(progress)["embedded"] == n_images, progress
    assert_same_content(db, straight)


KILLABLE_WORDS = """
import os, sys, time
from pathlib import Path
import precompute.words as words
out, rank = Path(sys.argv[2]), os.environ["RANK"]
out.joinpath(f"rank{rank}.pid").write_text(str(os.getpid()))
words.CHECKPOINT_SECONDS = 0.0  # this rank's part row is checkpointed after every chunk
rendered, real = 0, words.word_values

def slow_word_values(loaded, chunk):  # slow enough to be killed mid-way; counts what this rank renders
    global rendered
    time.sleep(0.25)
    if rendered >= 8:  # rank 1 has rendered 4 of its chunks of 2 words
        wait_for_release()
    rendered += len(chunk)
    out.joinpath(f"rank{rank}.rendered").write_text(str(rendered))
    return real(loaded, chunk)

words.word_values = slow_word_values
words.run_words(sys.argv[1], vocab=sys.argv[3].split(","), top=3, batch=2, device="cpu", progress=False)
"""
KILL_VOCAB = [*VOCAB, "orange", "yellow", "pink", "brown", "triangle", "heart", "cross", "house", "tree",
              "water", "fire", "car", "ship", "bird", "fish", "moon", "sun", "rain", "snow", "apple",
              "bread", "milk", "road", "door", "hand", "book", "ring", "bell", "lamp", "rose"]  # fmt: skip


@pytest.mark.slow
def test_a_killed_words_rank_restarted_resumes_to_the_same_words(tmp_path, demo_loaded):
    """Words under torchrun: rank 1 SIGKILLed mid-way through its chunks, the same command run
    again renders only the chunks its part row lacked and writes the same top words as one process."""
    import shutil

    from precompute.activations import run_activations
    from precompute.datasets import DemoDataset
    from precompute.words import run_words

    base, db, straight = tmp_path / "base.db", tmp_path / "killed.db", tmp_path / "straight.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_activations(demo_loaded, DemoDataset(32), f"sqlite:///{base}", top_k=4, batch_size=16,
                        sample_size=32, progress=False)  # fmt: skip
        shutil.copy(base, db)
        shutil.copy(base, straight)
        run_words(
            f"sqlite:///{straight}", loaded=demo_loaded, vocab=KILL_VOCAB, top=3, batch=2, progress=False
        )
    finally:
        torch.set_num_threads(threads)

    def position() -> int:
        return progress_of(db, "words@1/2", "position")

    script = tmp_path / "words_rank.py"
    script.write_text(GATE + KILLABLE_WORDS)
    command = [*torchrun(2), str(script), f"sqlite:///{db}", str(tmp_path), ",".join(KILL_VOCAB)]
    env = subprocess_env(threads=1)
    kill_rank_one_mid_way(command, env, tmp_path, lambda: position() >= 8)
    at = position()
    starts = list(range(0, len(KILL_VOCAB), 2))[1::2]  # rank 1's chunks: every 2nd one
    assert 8 <= at <= starts[4] < starts[-1], at  # rank 1 is held after 4 chunks

    (tmp_path / "rank1.rendered").unlink()
    restarted = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)  # same command
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    left = sum(len(KILL_VOCAB[s : s + 2]) for s in starts if s >= at)
    assert int((tmp_path / "rank1.rendered").read_text()) == left  # rank 1 went on from its checkpoint
    assert_same_content(db, straight)
