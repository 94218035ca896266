"""Issue 18 on the ``tiny_db`` fixture: exports (read back with pyarrow), lists, comparisons,
link previews, embeds, oEmbed, the model card and the API docs page."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.db import export, make_engine, session_factory
from app.db.schema import Label, LabelEvidence, Layer, Model, Neuron, TopExample

#: The documented export keys (README "Exports"). Keys may be added, never renamed or removed.
PINNED_KEYS = {
    "units": ["model", "layer", "unit", "mean", "std", "max", "multimodality", "n_examples", "top_label"],
    "labels": ["model", "layer", "unit", "label", "source", "score", "rank", "evidence",
               "auc", "p_value", "precision_top20", "n_images", "n_positive", "tag_source"],
    "examples": ["model", "layer", "unit", "rank", "value", "image_id", "dataset", "key", "caption"],
    "words": ["model", "layer", "unit", "rank", "word", "value"],
}


@pytest.fixture(scope="module")
def facts(tiny_db) -> dict[str, object]:
    engine = make_engine(tiny_db.url, create=False)
    with session_factory(engine)() as s:
        model = s.scalars(select(Model)).one()
        layers = list(s.scalars(select(Layer).where(Layer.model_id == model.id).order_by(Layer.position)))
        n_neurons = {
            layer.name: s.scalar(select(func.count()).where(Neuron.layer_id == layer.id)) for layer in layers
        }
        n_examples = s.scalar(select(func.count()).select_from(TopExample))
        last = layers[-1]
        best = s.execute(
            select(Neuron.unit, TopExample.value, TopExample.image_id)
            .join(TopExample, TopExample.neuron_id == Neuron.id)
            .where(Neuron.layer_id == last.id, Neuron.unit == 3)
            .order_by(TopExample.value.desc())
        ).first()
    engine.dispose()
    return {
        "slug": model.slug,
        "layers": [lr.name for lr in layers],
        "last": last.name,
        "n_neurons": n_neurons,
        "n_examples": n_examples,
        "unit3_best": best,
    }


def test_export_keys_are_pinned() -> None:
    assert {t: list(cols) for t, cols in export.COLUMNS.items()} == PINNED_KEYS


def _db_with_label_evidence(tiny_db, tmp_path, facts) -> str:
    """A copy of the tiny index with a manual label on the last layer's unit 3 and its held-out
    evidence (``label_evidence``, keyed by the label text in any case)."""
    path = tmp_path / "labelled.db"
    shutil.copyfile(tiny_db.path, path)
    engine = make_engine(f"sqlite:///{path}", create=False)
    with session_factory(engine)() as s:
        last = s.scalars(select(Layer).where(Layer.name == facts["last"])).one()
        neuron = s.scalars(select(Neuron).where(Neuron.layer_id == last.id, Neuron.unit == 3)).one()
        s.add(Label(neuron_id=neuron.id, label="Red", source="manual", score=None, rank=0))
        s.add(LabelEvidence(neuron_id=neuron.id, label="red", auc=0.91, p_value=1.5e-6, precision=0.85,
                            n_images=400, n_positive=37, tag_source="ground-truth"))  # fmt: skip
        s.add(Label(neuron_id=neuron.id, label="no evidence", source="manual", score=None, rank=1))
        s.commit()
    engine.dispose()
    return str(path)


@pytest.mark.slow  # a subprocess that imports the CLI (torch): ~10 s
def test_cli_export_parquet_reads_back_with_pyarrow(tiny_db, tmp_path, facts) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "export"
    db = _db_with_label_evidence(tiny_db, tmp_path, facts)
    args = ["export", "--db", db, "--format", "parquet", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in export.TABLES}
    for name, table in tables.items():
        assert table.column_names == PINNED_KEYS[name]
    units = tables["units"].to_pylist()
    assert len(units) == sum(facts["n_neurons"].values())
    assert {u["layer"] for u in units} == set(facts["layers"])
    examples = tables["examples"].to_pylist()
    assert len(examples) == facts["n_examples"]
    unit, value, image_id = facts["unit3_best"]
    first = next(e for e in examples if e["layer"] == facts["last"] and e["unit"] == unit and e["rank"] == 0)
    assert first["image_id"] == image_id and first["value"] == pytest.approx(value)
    assert first["dataset"].startswith("demo:") and first["key"]
    # labels carry their held-out evidence as columns (null where the label has none)
    labels = {(r["layer"], r["unit"], r["label"]): r for r in tables["labels"].to_pylist()}
    red = labels[(facts["last"], 3, "Red")]
    assert red["auc"] == pytest.approx(0.91) and red["p_value"] == pytest.approx(1.5e-6)
    assert red["precision_top20"] == pytest.approx(0.85)
    assert (red["n_images"], red["n_positive"], red["tag_source"]) == (400, 37, "ground-truth")
    assert red["source"] == "manual" and red["evidence"] == "manual"
    bare = labels[(facts["last"], 3, "no evidence")]
    assert [bare[k] for k in ("auc", "p_value", "precision_top20", "n_images", "n_positive")] == [None] * 5
    schema = tables["labels"].schema
    assert str(schema.field("auc").type) == "double" and str(schema.field("n_images").type) == "int64"


@pytest.mark.slow  # a subprocess that imports the CLI (torch): ~10 s
def test_cli_export_rejects_an_unknown_layer(tiny_db, tmp_path) -> None:
    args = ["export", "--db", str(tiny_db.path), "--layer", "nope", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "nope" in done.stderr


async def test_download_routes_stream_every_format(client, facts) -> None:
    import pyarrow.parquet as pq

    slug, layer = facts["slug"], facts["last"]
    r = await client.get(f"/models/{slug}/layers/{layer}/export/units.jsonl")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == facts["n_neurons"][layer] and list(rows[0]) == PINNED_KEYS["units"]
    r = await client.get(f"/models/{slug}/export/examples.csv")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    assert len(list(csv.DictReader(io.StringIO(r.text)))) == facts["n_examples"]
    r = await client.get(f"/models/{slug}/layers/{layer}/export/examples.parquet")
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column_names == PINNED_KEYS["examples"] and table.num_rows > 0
    assert (await client.get(f"/models/{slug}/export/secrets.csv")).status_code == 404
    assert (await client.get(f"/models/{slug}/layers/nope/export/units.csv")).status_code == 404
    page = (await client.get(f"/models/{slug}")).text
    assert f"/models/{slug}/export/units.parquet" in page
    page = (await client.get(f"/models/{slug}/layers/{layer}")).text
    assert f"/models/{slug}/layers/{layer}/export/labels.csv" in page


async def test_list_and_compare_with_json_twins(client, facts) -> None:
    slug, layer = facts["slug"], facts["last"]
    units = f"{slug}/{layer}/3,{slug}/{layer}/5,{slug}/nope/1"
    r = await client.get("/lists.json", params={"units": units, "title": "My colours"})
    assert r.status_code == 200
    data = r.json()
    assert data["title"] == "My colours"
    assert [u["ref"] for u in data["units"]] == units.split(",")
    assert [u["found"] for u in data["units"]] == [True, True, False]
    assert data["units"][0]["examples"] and data["units"][0]["histogram"]["n"] > 0
    page = await client.get("/lists", params={"units": units, "title": "My colours"})
    assert page.status_code == 200 and "My colours" in page.text and "Not in this index" in page.text
    r = await client.get("/compare.json", params={"units": f"{slug}/{layer}/3,{slug}/{layer}/5"})
    assert r.status_code == 200 and [u["unit"] for u in r.json()["units"]] == [3, 5]
    html = (await client.get("/compare", params={"units": f"{slug}/{layer}/3,{slug}/{layer}/5"})).text
    assert html.count('class="histogram"') == 2
    assert (await client.get("/compare", params={"units": f"{slug}/{layer}/3"})).status_code == 400
    assert (await client.get("/lists", params={"units": "just-a-word"})).status_code == 400


async def test_unfurl_tags_preview_png_embed_and_oembed(client, facts) -> None:
    slug, layer = facts["slug"], facts["last"]
    path = f"/models/{slug}/layers/{layer}/neurons/3"
    page = (await client.get(path, headers={"user-agent": "Slackbot-LinkExpanding 1.0"})).text
    image = re.search(r'<meta property="og:image" content="([^"]+)"', page).group(1)
    assert image == f"http://testserver/preview{path}.png"
    assert '<meta name="twitter:card" content="summary_large_image">' in page
    oembed = re.search(r'<link rel="alternate" type="application/json\+oembed" href="([^"]+)"', page).group(1)
    r = await client.get(oembed.replace("&amp;", "&").removeprefix("http://testserver"))
    assert r.status_code == 200 and r.json()["type"] == "rich"
    assert f'src="http://testserver/embed{path}"' in r.json()["html"]
    png = await client.get(image.removeprefix("http://testserver"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (1200, 630)
    again = await client.get(
        image.removeprefix("http://testserver"), headers={"if-none-match": png.headers["etag"]}
    )
    assert again.status_code == 304
    embed = await client.get(f"/embed{path}")
    assert embed.status_code == 200 and "<script" not in embed.text and 'target="_blank"' in embed.text
    home = (await client.get("/")).text
    assert '<meta property="og:title"' in home and '<meta name="twitter:card" content="summary">' in home
    assert (await client.get("/-/oembed", params={"url": "http://x/search"})).status_code == 404
    assert (await client.get(f"/preview/models/{slug}/layers/{layer}/neurons/99999.png")).status_code == 404


async def test_provenance_model_card_and_docs_page(client, facts) -> None:
    slug = facts["slug"]
    home = (await client.get("/")).text
    assert "random weights" not in home
    assert "synthetic shapes-and-words world" in home and f"/models/{slug}/card" in home
    card = await client.get(f"/models/{slug}/card")
    assert card.status_code == 200 and "<h2>" in card.text and "safetensors" in card.text
    assert (await client.get(f"/models/{slug}.json")).json()["model"]["provenance"][
        "card"
    ] == f"/models/{slug}/card"
    docs = await client.get("/-/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower() and "/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert 'href="/-/docs"' in home  # linked from the footer
