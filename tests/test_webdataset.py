"""webdataset shards as a dataset: brace and ``pipe:`` specs, ``dataset shard``, corrupt samples
skipped and counted, and resumption at the checkpoint's shard."""

from __future__ import annotations

import io
import random
import sqlite3
import tarfile
from pathlib import Path

import pytest
from PIL import Image as PILImage

from app.cli import main
from precompute import shards
from precompute.activations import run_activations
from precompute.datasets import DatasetError, open_dataset
from tests.precompute_support import assert_same_content


def _png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_dataset_shard_writes_shards_that_read_back_in_order(tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    colours = {"a.png": (255, 0, 0), "b.v2.png": (0, 255, 0), "sub/c.png": (0, 0, 255)}
    for name, colour in colours.items():
        (folder / name).write_bytes(_png(colour))
    PILImage.new("RGB", (30, 30), "white").save(folder / "d.jpg")
    (folder / "list.csv").write_text("path,caption\na.png,red one\nb.v2.png,\nsub/c.png,blue\nd.jpg,white\n")

    out = tmp_path / "shards"
    assert main(["dataset", "shard", str(folder / "list.csv"), "--out", str(out), "--size", "3"]) == 0
    said = capsys.readouterr().out
    assert "wrote 4 samples in 2 shard(s)" in said
    spec = said.split("--dataset '")[1].split("'")[0]
    assert spec == f"{out}/shard-{{000000..000001}}.tar"

    data = open_dataset(spec)
    assert isinstance(data, shards.ShardDataset)
    assert len(data) == 4 and data.parts() == [(0, 3), (3, 4)]
    assert [data.key(i) for i in range(4)] == [
        "shard-000000.tar/a", "shard-000000.tar/b_v2", "shard-000000.tar/sub/c", "shard-000001.tar/d",
    ]  # fmt: skip
    items = [data.decode(p, raw) for p, raw in data.iter_raw(list(range(4)))]
    assert [item.caption for item in items] == ["red one", None, "blue", "white"]
    assert [item.meta["key"] for item in items] == ["a.png", "b.v2.png", "sub/c.png", "d.jpg"]
    assert items[2].image.getpixel((5, 5)) == (0, 0, 255)  # bytes copied, decoded as RGB
    # the same shards through a pipe: command, and several specs joined with ::
    piped = open_dataset(f"pipe:cat {out}/shard-000000.tar::{out}/shard-000001.tar")
    assert [piped.key(i) for i in range(4)] == [data.key(i) for i in range(4)]
    assert piped.load(3).caption == "white"


@pytest.mark.parametrize(
    "spec,message",
    [("missing-{0..1}.tar", "shard not found"), ("pipe:false", "cannot open shard pipe:false")],
)
def test_bad_shard_specs_are_clear_errors(tmp_path, spec, message):
    with pytest.raises(DatasetError, match=message):
        open_dataset(spec if spec.startswith("pipe:") else str(tmp_path / spec))


def test_corrupt_samples_are_skipped_and_counted(tmp_path, demo_loaded):
    good = [(f"ok{i}.png", _png((40 * i, 0, 0))) for i in range(3)]
    _tar(tmp_path / "s-0.tar", [good[0], ("broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg"), ("broken.txt", b"x"),
                                ("textonly.txt", b"no image here"), good[1]])  # fmt: skip
    # a shard truncated in the middle of its second member
    noise = PILImage.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    _tar(tmp_path / "s-1.tar", [good[2], ("lost.png", buffer.getvalue())])
    with tarfile.open(tmp_path / "s-1.tar") as tar:
        cut = tar.getmember("lost.png").offset_data + 1000
    (tmp_path / "s-1.tar").write_bytes((tmp_path / "s-1.tar").read_bytes()[:cut])

    spec = str(tmp_path / "s-{0..1}.tar")
    data = open_dataset(spec)
    assert len(data) == 6
    report = run_activations(demo_loaded, spec, f"sqlite:///{tmp_path / 'x.db'}", top_k=2, batch_size=4,
                             sample_size=3, progress=False)  # fmt: skip
    assert report.status == "done" and report.n_indexed == 3
    skipped = dict(report.skipped)
    assert set(skipped) == {"s-0.tar/broken", "s-0.tar/textonly", "s-1.tar/lost"}
    assert "no image" in skipped["s-0.tar/textonly"]
    assert "unreadable" in skipped["s-1.tar/lost"]
    con = sqlite3.connect(tmp_path / "x.db")
    keys = sorted(r[0] for r in con.execute("SELECT key FROM images"))
    con.close()
    assert keys == ["s-0.tar/ok0", "s-0.tar/ok1", "s-1.tar/ok2"]


def test_a_run_resumes_at_the_shard_of_its_checkpoint(tmp_path, demo_loaded, monkeypatch):
    from precompute.shard_writer import write_shards

    spec, n, n_shards = write_shards("demo:20", tmp_path / "shards", 5)
    assert (n, n_shards) == (20, 4)
    kwargs = {"top_k": 3, "batch_size": 5, "sample_size": 6, "progress": False}
    url = f"sqlite:///{tmp_path / 'resumed.db'}"
    first = run_activations(demo_loaded, spec, url, checkpoint_batches=1, checkpoint_min_seconds=0,
                            stop_after_batches=3, **kwargs)  # fmt: skip
    assert first.status == "interrupted"

    opened: list[int] = []
    original = shards.ShardDataset._samples

    def counting(self, shard):
        opened.append(shard)
        return original(self, shard)

    monkeypatch.setattr(shards.ShardDataset, "_samples", counting)
    last = run_activations(demo_loaded, spec, url, **kwargs)
    assert last.status == "done" and last.batches_run == 1
    assert opened == [3]  # only the last shard is read again
    monkeypatch.setattr(shards.ShardDataset, "_samples", original)

    straight = tmp_path / "straight.db"
    run_activations(demo_loaded, spec, f"sqlite:///{straight}", **kwargs)
    assert_same_content(tmp_path / "resumed.db", straight, rtol=0)
