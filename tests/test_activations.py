"""The activations stage: top-k vs brute force, resumability, no-op re-runs, corrupt images,
datasets, and neuron directions."""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from app.cli import main
from app.db import from_bytes
from app.neurons.capture import layer_maps
from app.neurons.directions import unit_directions
from precompute import activations
from precompute.activations import run_activations
from precompute.datasets import DatasetError, iter_batches, open_dataset, read_image, to_rgb
from tests.conftest import TINY_BATCH, TINY_DATASET, TINY_SAMPLE, TINY_TOP_K

RUN_TIMES = {"started_at", "finished_at"}


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table (run timestamps left out), in insertion order."""
    con = sqlite3.connect(path)
    try:
        query = "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
        tables = [r[0] for r in con.execute(query)]
        out = {}
        for table in tables:
            cursor = con.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
            columns = [d[0] for d in cursor.description]
            keep = [i for i, c in enumerate(columns) if not (table == "runs" and c in RUN_TIMES)]
            out[table] = [tuple(row[i] for i in keep) for row in cursor.fetchall()]
        return out
    finally:
        con.close()


def brute_force(loaded, spec: str, batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Spatial maps (N, U, H, W) and maxima (N, U) of every image, batched like the pass."""
    dataset = open_dataset(spec)
    maps: dict[str, list[np.ndarray]] = {layer.name: [] for layer in loaded.layers}
    for batch in iter_batches(dataset, loaded.preprocess, batch_size):
        for name, value in layer_maps(loaded, batch.pixels).items():
            maps[name].append(value.float().numpy())
    full = {name: np.concatenate(chunks) for name, chunks in maps.items()}
    return full, {name: m.max(axis=(2, 3)) for name, m in full.items()}


@pytest.fixture(scope="module")
def tiny_brute(demo_loaded):
    return brute_force(demo_loaded, TINY_DATASET, TINY_BATCH)


def test_topk_equals_a_brute_force_ranking(tiny_db, tiny_brute):
    maps, maxima = tiny_brute
    con = sqlite3.connect(tiny_db.path)
    for layer_id, name, units in con.execute("SELECT id, name, n_units FROM layers ORDER BY position"):
        values = maxima[name]  # (N, U)
        checked = 0
        for unit in range(0, units, 37):
            rows = con.execute(
                "SELECT t.rank, i.position, t.value, t.heatmap FROM top_examples t "
                "JOIN neurons n ON n.id = t.neuron_id JOIN images i ON i.id = t.image_id "
                "WHERE n.layer_id = ? AND n.unit = ? ORDER BY t.rank",
                (layer_id, unit),
            ).fetchall()
            order = np.lexsort((np.arange(len(values)), -values[:, unit]))[:TINY_TOP_K]
            assert [r[0] for r in rows] == list(range(TINY_TOP_K))
            assert [r[1] for r in rows] == order.tolist()
            np.testing.assert_allclose([r[2] for r in rows], values[order, unit], rtol=1e-5, atol=1e-9)
            for _, position, _, heatmap in rows:
                grid = maps[name].shape[2:]
                stored = from_bytes(heatmap, "float16", grid)
                # float16 storage; the pass may use another (equivalent) conv memory layout
                # and summation order, so near-zero cells get an absolute tolerance at the map's scale
                expected = maps[name][position, unit]
                scale = float(np.abs(expected).max())
                np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-4 * scale)
            checked += 1
        stats = con.execute(
            "SELECT unit, mean, std, max FROM neurons WHERE layer_id = ? ORDER BY unit", (layer_id,)
        ).fetchall()
        assert len(stats) == units and checked > 0
        got = np.array([s[1:] for s in stats])
        np.testing.assert_allclose(got[:, 0], values.mean(0), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(got[:, 1], values.std(0), rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(got[:, 2], values.max(0), rtol=1e-5, atol=1e-9)
    con.close()


def test_sample_directions_and_images_are_stored(tiny_db, tiny_brute, demo_loaded):
    _, maxima = tiny_brute
    con = sqlite3.connect(tiny_db.path)
    for layer_id, name, units, is_last in con.execute("SELECT id, name, n_units, is_last FROM layers"):
        image_ids, n_images, n_units, values = con.execute(
            'SELECT image_ids, n_images, n_units, "values" FROM activation_samples WHERE layer_id = ?',
            (layer_id,),
        ).fetchone()
        image_ids = json.loads(image_ids)
        assert (n_images, n_units) == (TINY_SAMPLE, units) and len(image_ids) == TINY_SAMPLE
        positions = [
            con.execute("SELECT position FROM images WHERE id = ?", (i,)).fetchone()[0] for i in image_ids
        ]
        sample = from_bytes(values, "float16", (n_images, n_units))
        np.testing.assert_allclose(sample, maxima[name][positions], rtol=2e-3, atol=1e-7)
        direction = con.execute(
            'SELECT n_units, embed_dim, "values" FROM directions WHERE layer_id = ?', (layer_id,)
        ).fetchone()
        if is_last:
            layer = demo_loaded.layer(name)
            expected = unit_directions(demo_loaded.visual, layer).numpy()
            assert direction[:2] == (units, demo_loaded.embed_dim)
            np.testing.assert_array_equal(from_bytes(direction[2], "float32", expected.shape), expected)
        else:
            assert direction is None
    keys, captions, metas = zip(
        *con.execute("SELECT key, caption, meta FROM images ORDER BY position"), strict=True
    )
    assert keys[0] == "heldout/0" and all(captions)
    assert "modality" in json.loads(metas[0])  # demo ground truth travels with the image
    thumbs = con.execute(
        "SELECT count(*) FROM images i JOIN blobs b ON b.sha256 = i.thumb_sha256 "
        "WHERE b.mime = 'image/jpeg' AND b.width = ?",
        (demo_loaded.image_size,),
    )
    thumbs = thumbs.fetchone()[0]
    assert thumbs == len(keys)
    run = con.execute("SELECT status, state, progress FROM runs").fetchall()
    assert len(run) == 1 and run[0][:2] == ("done", None)
    assert json.loads(run[0][2])["n_indexed"] == 48
    con.close()


def _tiny_run(loaded, url: str, **kwargs):
    return run_activations(
        loaded,
        TINY_DATASET,
        url,
        top_k=TINY_TOP_K,
        batch_size=TINY_BATCH,
        sample_size=TINY_SAMPLE,
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("thumbs_in_checkpoint", [True, False])
def test_interrupted_runs_resume_to_the_same_database(
    tmp_path, demo_loaded, tiny_db, monkeypatch, thumbs_in_checkpoint
):
    if not thumbs_in_checkpoint:  # thumbnails are then re-read from the dataset at the end
        monkeypatch.setattr(activations, "MAX_CHECKPOINT_THUMB_BYTES", 0)
    path = tmp_path / "resumed.db"
    url = f"sqlite:///{path}"
    # killed before any checkpoint
    first = _tiny_run(demo_loaded, url, checkpoint_batches=2, checkpoint_min_seconds=0, stop_after_batches=1)
    assert (first.status, first.batches_run) == ("interrupted", 1)
    # checkpoint after batch 2, killed after batch 3
    second = _tiny_run(demo_loaded, url, checkpoint_batches=2, checkpoint_min_seconds=0, stop_after_batches=3)
    assert (second.status, second.batches_run) == ("interrupted", 3)
    con = sqlite3.connect(path)
    progress = json.loads(con.execute("SELECT progress FROM runs").fetchone()[0])
    con.close()
    assert progress["position"] == 2 * TINY_BATCH
    last = _tiny_run(demo_loaded, url, checkpoint_batches=2, checkpoint_min_seconds=0)
    assert (last.status, last.batches_run, last.n_indexed) == ("done", 1, 48)

    expected, got = dump(tiny_db.path), dump(path)
    assert set(got) == set(expected)
    for table in (
        "models",
        "layers",
        "neurons",
        "images",
        "blobs",
        "top_examples",
        "activation_samples",
        "directions",
    ):
        assert expected[table], f"{table} is empty"
    for table in expected:
        assert got[table] == expected[table], f"table {table} differs"


def test_a_finished_run_is_a_noop(tmp_path, demo_loaded, tiny_db):
    path = tmp_path / "copy.db"
    shutil.copy(tiny_db.path, path)
    before = dump(path)
    again = _tiny_run(demo_loaded, f"sqlite:///{path}")
    assert (again.status, again.batches_run, again.n_indexed) == ("already-done", 0, 48)
    assert dump(path) == before


def test_different_parameters_start_a_new_run(tmp_path, demo_loaded):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    one = run_activations(demo_loaded, "demo:8", url, top_k=2, batch_size=8, sample_size=4, progress=False)
    two = run_activations(demo_loaded, "demo:8", url, top_k=3, batch_size=8, sample_size=4, progress=False)
    assert one.status == two.status == "done" and one.run_id != two.run_id
    con = sqlite3.connect(tmp_path / "k.db")
    assert con.execute("SELECT max(rank) FROM top_examples").fetchone()[0] == 2  # replaced, not mixed
    assert con.execute("SELECT count(*) FROM neurons").fetchone()[0] == 256 + 512
    con.close()


# --- folders, corrupt files, list files ------------------------------------------------------


def _photo(seed: int, size: tuple[int, int] = (120, 90)) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return PILImage.fromarray(small).resize(size, PILImage.Resampling.BILINEAR)


def make_folder(root: Path) -> None:
    """Good images in every awkward mode, a rotated JPEG, a corrupt JPEG and a non-image."""
    (root / "sub" / "deeper").mkdir(parents=True)
    _photo(1).save(root / "a_rgb.jpg", quality=90)
    _photo(2).convert("L").save(root / "b_grey.png")
    _photo(3).convert("P", palette=PILImage.Palette.ADAPTIVE).save(root / "sub" / "c_palette.gif")
    _photo(4).convert("RGBA").save(root / "sub" / "d_rgba.webp")
    _photo(5).convert("CMYK").save(root / "sub" / "deeper" / "e_cmyk.jpg")
    _photo(6).save(root / "f.bmp")
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    _photo(7, (120, 80)).save(root / "g_rotated.JPG", exif=exif.tobytes())
    good = (root / "a_rgb.jpg").read_bytes()
    (root / "sub" / "h_corrupt.jpg").write_bytes(good[: len(good) // 3])  # truncated mid-scan
    (root / "notes.txt").write_text("not an image")


def test_a_folder_with_a_corrupt_jpeg_is_indexed_and_the_corrupt_file_reported(tmp_path, capsys):
    folder = tmp_path / "photos"
    make_folder(folder)
    db = tmp_path / "folder.db"
    code = main(
        [
            "precompute",
            "activations",
            "--model",
            "demo",
            "--dataset",
            str(folder),
            "--db",
            str(db),
            "--top-k",
            "3",
            "--batch-size",
            "3",
            "--sample",
            "20",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "indexed 7 of 8 images" in out
    assert "skipped 1 unreadable image(s):" in out and "sub/h_corrupt.jpg" in out
    con = sqlite3.connect(db)
    rows = dict((k, (w, h)) for k, w, h in con.execute("SELECT key, width, height FROM images"))
    assert set(rows) == {
        "a_rgb.jpg",
        "b_grey.png",
        "sub/c_palette.gif",
        "sub/d_rgba.webp",
        "sub/deeper/e_cmyk.jpg",
        "f.bmp",
        "g_rotated.JPG",
    }
    assert rows["g_rotated.JPG"] == (80, 120)  # EXIF orientation applied
    progress = json.loads(con.execute("SELECT progress FROM runs").fetchone()[0])
    assert progress["n_skipped"] == 1 and progress["skipped"][0][0] == "sub/h_corrupt.jpg"
    con.close()
    # and again: a finished run is reported as such, nothing is redone
    assert (
        main(
            [
                "precompute",
                "activations",
                "--model",
                "demo",
                "--dataset",
                str(folder),
                "--db",
                str(db),
                "--top-k",
                "3",
                "--batch-size",
                "3",
                "--sample",
                "20",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "already indexed" in capsys.readouterr().out


def test_image_modes_become_rgb(tmp_path):
    make_folder(tmp_path)
    for name in ("b_grey.png", "sub/c_palette.gif", "sub/d_rgba.webp", "sub/deeper/e_cmyk.jpg"):
        assert read_image(tmp_path / name).mode == "RGB"
    transparent = PILImage.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    assert to_rgb(PILImage.new("I;16", (2, 2), 65535)).getpixel((0, 0)) == (255, 255, 255)


def test_folder_order_and_corrupt_items(tmp_path):
    make_folder(tmp_path)
    dataset = open_dataset(str(tmp_path))
    keys = [dataset.key(i) for i in range(len(dataset))]
    assert keys == sorted(keys) and "notes.txt" not in keys and len(keys) == 8
    bad = dataset.load(keys.index("sub/h_corrupt.jpg"))
    assert bad.image is None and bad.error


def test_csv_and_jsonl_lists(tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "list.csv").write_text(
        "path,caption\nimgs/a_rgb.jpg,a photo\nimgs/f.bmp,\nimgs/missing.png,gone\n"
    )
    (tmp_path / "list.jsonl").write_text(
        '{"path": "imgs/a_rgb.jpg", "caption": "a photo"}\n\n{"path": "imgs/f.bmp"}\n'
    )
    csv_data = open_dataset(str(tmp_path / "list.csv"))
    jsonl_data = open_dataset(str(tmp_path / "list.jsonl"))
    assert len(csv_data) == 3 and len(jsonl_data) == 2
    for data in (csv_data, jsonl_data):
        first, second = data.load(0), data.load(1)
        assert (first.key, first.caption, first.image.size) == ("imgs/a_rgb.jpg", "a photo", (120, 90))
        assert second.caption is None and second.image is not None
    missing = csv_data.load(2)
    assert missing.image is None and "FileNotFoundError" in missing.error


@pytest.mark.parametrize("spec", ["demo:0", "demo:x", "/no/such/folder", "README.md"])
def test_bad_dataset_specs_are_clear_errors(spec):
    with pytest.raises(DatasetError):
        open_dataset(spec)


def test_batches_are_fixed_position_ranges(demo_loaded):
    dataset = open_dataset("demo:10")
    batches = iter_batches(dataset, demo_loaded.preprocess, 4, start=4)
    spans = [(b.start, b.stop, b.positions) for b in batches]
    assert spans == [(4, 8, [4, 5, 6, 7]), (8, 10, [8, 9])]


# --- directions ------------------------------------------------------------------------------


def test_resnet_direction_reproduces_the_attention_pool_output(demo_loaded):
    """With a constant final feature map (and no positional embedding) attention pooling is
    exactly linear: output = sum_u activation_u * direction_u + bias."""
    layer = demo_loaded.layers[-1]
    directions = unit_directions(demo_loaded.visual, layer)
    pool = copy.deepcopy(demo_loaded.visual.attnpool)
    with torch.no_grad():
        pool.positional_embedding.zero_()
        torch.manual_seed(3)
        feature = torch.rand(layer.n_units)  # post-ReLU activations are >= 0
        grid = feature[None, :, None, None].expand(1, -1, *layer.grid).contiguous()
        out = pool(grid)[0]
        bias = pool.c_proj.weight @ pool.v_proj.bias + pool.c_proj.bias
    torch.testing.assert_close(out, feature @ directions + bias, rtol=1e-4, atol=1e-5)


def test_vit_direction_matches_the_embedding_change_of_a_unit(vit_b32_random):
    """Nudging a last-block unit on the CLS token moves the image embedding along its direction."""
    loaded = vit_b32_random
    layer = loaded.layers[-1]
    directions = unit_directions(loaded.visual, layer)
    assert directions.shape == (layer.n_units, loaded.embed_dim)
    gelu = loaded.visual.get_submodule(layer.hook)
    torch.manual_seed(4)
    image = torch.randn(1, 3, 224, 224)
    nudge: dict[str, tuple[int, float]] = {}

    def add(_module, _args, output):
        if nudge:
            unit, delta = nudge["u"]
            output = output.clone()
            output[:, 0, unit] += delta
            return output
        return output

    handle = gelu.register_forward_hook(add)
    try:
        with torch.no_grad():
            base = loaded.visual(image)[0]
            for unit in (100, 2047):
                nudge["u"] = (unit, 1e-2)
                change = (loaded.visual(image)[0] - base) / 1e-2
                cosine = torch.nn.functional.cosine_similarity(change, directions[unit], dim=0)
                assert cosine > 0.95, (unit, float(cosine))
                other = torch.nn.functional.cosine_similarity(change, directions[unit + 1], dim=0)
                assert abs(other) < 0.5
    finally:
        handle.remove()


# --- a real kill -----------------------------------------------------------------------------

KILLABLE_RUN = """
import sys, time
from app.models import ModelSpec
from precompute.activations import run_activations
from precompute.datasets import DemoDataset

class SlowDemo(DemoDataset):  # slow storage: the pass takes long enough to be killed mid-way
    def load(self, position):
        time.sleep(0.01)
        while position >= 88:  # the last batch never comes: the kill lands mid-way on a busy machine too
            time.sleep(1)
        return super().load(position)

run_activations(ModelSpec.parse("demo"), SlowDemo(96), sys.argv[1], top_k=4, batch_size=8,
                sample_size=24, checkpoint_batches=1, checkpoint_min_seconds=0, progress=False)
"""


def _progress(path: Path) -> int:
    try:
        con = sqlite3.connect(path, timeout=1)
        try:
            row = con.execute("SELECT progress FROM runs").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return -1
    return json.loads(row[0]).get("position", 0) if row else -1


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_database(tmp_path, demo_loaded):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    killed = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, f"sqlite:///{killed}"], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 120
        while _progress(killed) < 3 * 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.uniform(0, 0.2))  # land anywhere: mid-batch, mid-checkpoint
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 * 8 <= _progress(killed) <= 88

    from precompute.datasets import DemoDataset

    kwargs = {"top_k": 4, "batch_size": 8, "sample_size": 24, "progress": False}
    resumed = run_activations(demo_loaded, DemoDataset(96), f"sqlite:///{killed}", **kwargs)
    assert resumed.status == "done" and resumed.batches_run < 12
    straight = tmp_path / "straight.db"
    run_activations(demo_loaded, DemoDataset(96), f"sqlite:///{straight}", **kwargs)
    assert dump(killed) == dump(straight)


def test_a_dataset_without_one_readable_image_fails(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["precompute", "activations", "--dataset", str(tmp_path / "imgs"), "--db", str(tmp_path / "x.db")]
    assert main([*args, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "a.jpg" in captured.out and "no image of the dataset could be read" in captured.err
    assert (
        main(
            [
                "precompute",
                "activations",
                "--dataset",
                str(tmp_path / "nothing"),
                "--db",
                str(tmp_path / "y.db"),
            ]
        )
        == 2
    )
    assert "dataset not found" in capsys.readouterr().err


def test_a_vision_transformer_is_indexed_end_to_end(tmp_path, vit_b32_random):
    path = tmp_path / "vit.db"
    report = run_activations(
        vit_b32_random, "demo:6", f"sqlite:///{path}", top_k=2, batch_size=3, sample_size=4, progress=False
    )
    assert report.status == "done" and report.n_indexed == 6
    con = sqlite3.connect(path)
    layers = con.execute(
        "SELECT id, n_units, grid_h, grid_w, is_last FROM layers ORDER BY position"
    ).fetchall()
    assert [layer[1:] for layer in layers] == [(3072, 7, 7, 0), (3072, 7, 7, 1)]
    sizes = {r[0] for r in con.execute("SELECT length(heatmap) FROM top_examples")}
    assert sizes == {7 * 7 * 2}  # float16 patch grid
    assert con.execute("SELECT count(*) FROM top_examples").fetchone()[0] == 2 * 3072 * 2
    values = [r[0] for r in con.execute("SELECT value FROM top_examples ORDER BY neuron_id, rank")]
    assert all(a >= b for a, b in zip(values[::2], values[1::2], strict=True))
    direction = con.execute("SELECT layer_id, n_units, embed_dim FROM directions").fetchall()
    assert direction == [(layers[1][0], 3072, 512)]
    assert con.execute("SELECT image_size, embed_dim FROM models").fetchone() == (224, 512)
    con.close()


def test_an_unreadable_checkpoint_starts_the_pass_over(tmp_path, demo_loaded, tiny_db, capsys):
    path = tmp_path / "garbled.db"
    url = f"sqlite:///{path}"
    _tiny_run(demo_loaded, url, checkpoint_batches=1, checkpoint_min_seconds=0, stop_after_batches=2)
    con = sqlite3.connect(path)
    con.execute("UPDATE runs SET state = ?", (b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage",))
    con.commit()
    con.close()
    again = _tiny_run(demo_loaded, url)
    assert (again.status, again.batches_run) == ("done", 3)
    assert "starting over" in capsys.readouterr().err
    assert dump(path) == dump(tiny_db.path)
