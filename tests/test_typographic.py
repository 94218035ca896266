"""The typographic attack lab: drawing words, measuring what changed, and the ``/typographic`` page."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from app.db import make_engine, session_factory
from app.db.schema import Image as ImageRow
from app.neurons.typographic import Attack, AttackError, activation_changes, parse_colour, write_word
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, live_server
from tests.meaning_support import labelled_db, needs_weights, trained_db


@pytest.fixture(scope="module")
def server(tiny_db, demo_loaded, tmp_path_factory) -> Iterator[tuple[httpx.Client, str]]:
    labelled = labelled_db(tiny_db, demo_loaded, tmp_path_factory.mktemp("labelled"))
    url = copy_db(labelled.removeprefix("sqlite:///"), tmp_path_factory.mktemp("typo_db"))
    with live_server(url, demo_loaded, "demo") as (base, _runner, _app):
        with csrf_client(base, timeout=60) as client:  # form POSTs carry a CSRF token (app.web.csrf)
            yield client, url


def _object_image_id(url: str, colour: str | None = None) -> int:
    with session_factory(make_engine(url, create=False))() as s:
        for image_id, meta in s.execute(select(ImageRow.id, ImageRow.meta).order_by(ImageRow.id)):
            if meta.get("modality") == "object" and (colour is None or meta.get("colour") == colour):
                return int(image_id)
    raise AssertionError("no object image in the fixture DB")


# ----------------------------------------------------------------------------- drawing


def test_attack_parameters_are_validated() -> None:
    attack = Attack.parse("  blue ", "center", "30", "#00ff00")
    assert (attack.word, attack.placement, attack.size, attack.rgb) == ("blue", "centre", 30, (0, 255, 0))
    assert Attack.parse("x", None, None, None) == Attack("x", "centre", 25, "black")
    bad_inputs = [("", None, None, None), ("x" * 41, None, None, None), ("x", "left", None, None),
                  ("x", None, "200", None), ("x", None, "big", None), ("x", None, None, "ultra")]  # fmt: skip
    for bad in bad_inputs:
        with pytest.raises(AttackError):
            Attack.parse(*bad)
    assert parse_colour("RED") == (215, 30, 35)


@pytest.mark.parametrize("placement", ["top", "bottom", "centre", "label"])
def test_word_is_drawn_where_asked(placement: str) -> None:
    base = Image.new("RGB", (128, 128), (200, 30, 30))
    out = np.asarray(write_word(base, Attack("blue", placement, 20, "blue"))).astype(int)
    changed = np.abs(out - np.asarray(base).astype(int)).sum(2) > 0
    rows = np.flatnonzero(changed.any(1))
    assert rows.size, "nothing was drawn"
    centre = rows.mean()
    if placement == "top":
        assert centre < 40
    elif placement == "bottom":
        assert centre > 88
    else:
        assert 40 < centre < 88
    assert (np.abs(out - [35, 75, 220]).sum(2) < 60).sum() > 50  # blue ink pixels
    if placement == "label":
        assert (out.min(2) > 240).sum() > 50  # the white sticker
    assert np.asarray(base).mean() == pytest.approx(
        np.asarray(Image.new("RGB", (1, 1), (200, 30, 30))).mean()
    )


def test_changes_are_ranked_in_sigma_units() -> None:
    before = {"a": np.array([0.0, 0.0, 0.0, 1.0])}
    after = {"a": np.array([1.0, 0.5, -2.0, 1.0])}
    stds = {"a": np.array([1.0, 0.1, 1.0, 0.0])}
    out = activation_changes(before, after, stds, k=2)["a"]
    assert [(c.unit, round(c.delta_sigma, 3)) for c in out["rose"]] == [(1, 5.0), (0, 1.0)]
    assert [c.unit for c in out["fell"]] == [2] and out["fell"][0].delta == -2.0


# ----------------------------------------------------------------------------- the page


def test_form_offers_examples_and_the_suggested_attack(server) -> None:
    client, _ = server
    page = client.get("/typographic")
    assert page.status_code == 200 and "Pick an image" in page.text
    data = client.get("/typographic.json").json()
    assert data["result"] is None and data["examples"] and data["live"]["available"]
    assert data["options"]["placements"] == ["centre", "top", "bottom", "label"]
    assert len(data["classes"]) == 14  # the demo vocabulary, from the concept profiles


def test_attack_result_json_twin_and_permalink(server) -> None:
    client, url = server
    image_id = _object_image_id(url)
    params = {
        "image": image_id,
        "word": "blue",
        "placement": "label",
        "size": "30",
        "classes": "red, blue, green",
    }
    data = client.get("/typographic.json", params=params).json()
    result = data["result"]
    classes = {c["class"]: c for c in result["zero_shot"]["classes"]}
    assert set(classes) == {"red", "blue", "green"}
    assert sum(c["before"] for c in classes.values()) == pytest.approx(1, abs=1e-4)
    assert sum(c["after"] for c in classes.values()) == pytest.approx(1, abs=1e-4)
    assert result["images"]["before"] != result["images"]["after"]
    assert [layer["layer"] for layer in result["changes"]] == ["layer4.5", "layer3.0"]  # deepest first
    for layer in result["changes"]:
        rose, fell = layer["rose"], layer["fell"]
        assert rose or fell
        assert [n["delta_sigma"] for n in rose] == sorted((n["delta_sigma"] for n in rose), reverse=True)
        assert all(n["delta_sigma"] > 0 for n in rose) and all(n["delta_sigma"] < 0 for n in fell)
        # issue 16: only labels backed by held-out evidence are titles; every unit still has its link
        assert all("label" in n and n["url"] for n in rose + fell)
    first = result["changes"][0]["rose"][0]
    assert client.get(first["url"]).status_code == 200
    permalink = data["permalink"]
    assert "word=blue" in permalink and f"image={image_id}" in permalink and "placement=label" in permalink
    again = client.get(permalink.replace("/typographic?", "/typographic.json?")).json()
    assert again["result"]["zero_shot"] == result["zero_shot"]  # the permalink reproduces the result
    html = client.get(permalink).text
    assert "Neurons that changed most" in html and f'href="{first["url"]}"' in html


def test_bad_requests_are_4xx_with_a_message(server) -> None:
    client, url = server
    image_id = _object_image_id(url)
    assert client.get("/typographic", params={"image": 10**9, "word": "x"}).status_code == 404
    assert client.get("/typographic", params={"image": "abc", "word": "x"}).status_code == 404
    bad = client.get("/typographic.json", params={"image": image_id, "word": "x", "size": "500"})
    assert bad.status_code == 422 and "size" in bad.json()["error"]
    gone = client.get("/typographic.json", params={"analysis": "no-such-upload", "word": "x"})
    assert gone.status_code == 404 and "upload" in gone.json()["error"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_gets_a_permalink(server) -> None:
    client, _ = server
    picture = Image.new("RGB", (200, 150), (210, 30, 40))
    response = client.post(
        "/typographic",
        files={"image": ("red.png", _png(picture), "image/png")},
        data={"word": "green", "placement": "centre", "classes": "red, green"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/typographic?analysis=") and "word=green" in location
    data = client.get(location.replace("/typographic?", "/typographic.json?")).json()
    assert data["source"]["kind"] == "upload"
    assert {c["class"] for c in data["result"]["zero_shot"]["classes"]} == {"red", "green"}
    junk = client.post(
        "/typographic", files={"image": ("x.png", b"not an image", "image/png")}, data={"word": "x"}
    )
    assert junk.status_code in (415, 422) and "<html" in junk.text
    empty = client.post("/typographic", data={"word": "x"})
    assert empty.status_code == 422


@pytest.mark.slow
@needs_weights
def test_writing_blue_on_red_objects_moves_the_prediction(demo_loaded, tmp_path_factory) -> None:
    """The demo world's typographic attack: a red object labelled "blue" loses probability for red."""
    url = trained_db(demo_loaded, tmp_path_factory.mktemp("trained"))
    with session_factory(make_engine(url, create=False))() as s:
        reds = [
            int(i)
            for i, meta in s.execute(select(ImageRow.id, ImageRow.meta).order_by(ImageRow.id))
            if meta.get("modality") == "object" and meta.get("colour") == "red"
        ]
    assert len(reds) >= 4, "too few red objects in the trained index"
    colours = "red, orange, yellow, green, blue, purple, pink, brown"
    drops, gains, flips = [], [], 0
    with live_server(copy_db(url.removeprefix("sqlite:///"), tmp_path_factory.mktemp("typo_trained")),
                     demo_loaded, "demo") as (base, _runner, _app):  # fmt: skip
        with httpx.Client(base_url=base, timeout=60) as client:
            suggestion = client.get("/typographic.json").json()["suggestion"]
            assert suggestion and suggestion["word"] == "blue" and int(suggestion["image"]) in reds

            def probabilities(image_id: int, word: str) -> dict[str, float]:
                params: dict[str, Any] = {"image": image_id, "word": word, "placement": "label", "size": 20,
                                          "classes": colours}  # fmt: skip
                z = client.get("/typographic.json", params=params).json()["result"]["zero_shot"]
                return {c["class"]: c["after"] for c in z["classes"]} | {"top": z["top_after"]}

            for image_id in reds[:6]:
                control = probabilities(image_id, "dog")  # same sticker, a word that is no colour
                attacked = probabilities(image_id, "blue")
                drops.append(control["red"] - attacked["red"])
                gains.append(attacked["blue"] - control["blue"])
                flips += control["top"] == "red" and attacked["top"] == "blue"
    # the written word, not the sticker covering the object, moves the prediction from red to blue
    # (shipped weights: mean drop 0.21, mean gain 0.19, 1 flip; the 7/14 weights gave 0.26 and 0.12)
    assert np.mean(drops) > 0.2 and np.mean(gains) > 0.1, (drops, gains)
    assert flips >= 1, (flips, drops, gains)


# ----------------------------------------------------------------------------- in a browser

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_lab_works_in_a_browser_without_javascript_tricks(server) -> None:
    """Pick an image, type a word, submit: the before/after result appears (plain HTML forms)."""
    from playwright.sync_api import sync_playwright

    client, _ = server
    base = str(client.base_url).rstrip("/")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/typographic")
            page.locator(".pick-grid a").first.click()
            page.wait_for_load_state("networkidle")
            assert "image=" in page.url
            page.fill("input[name=word]", "blue")
            page.select_option("select[name=placement]", "label")
            page.click("#attack-form button[type=submit]")
            page.wait_for_load_state("networkidle")
            assert "word=blue" in page.url and "placement=label" in page.url
            assert page.locator(".pair img").count() == 2
            assert page.locator(".prob-table tbody tr").count() == 14
            assert page.locator(".change").count() > 0
            assert not errors, errors
        finally:
            browser.close()


# ------------------------------------------------------------------------ issue 18: honest lab


def test_verdict_reports_failed_attacks_as_failed() -> None:
    from app.web.views.typographic import verdict

    classes = ["square", "pink", "blue"]
    failed = verdict("blue", classes, 0, 1)  # moved to another class, not to the word
    assert failed["attack_succeeded"] is False and failed["verdict"].startswith("The attack failed")
    assert "not to the written word “blue”" in failed["verdict"]
    assert verdict("blue", classes, 0, 2)["attack_succeeded"] is True
    assert verdict("blue", classes, 0, 0)["verdict"] == "The attack failed: the prediction stays “square”."
    assert verdict("banana", classes, 0, 1)["attack_succeeded"] is None


def test_blank_label_control_picker_and_lean_json(server) -> None:
    client, url = server
    with session_factory(make_engine(url, create=False))() as session:
        metas = [m for m in session.scalars(select(ImageRow.meta)) if m.get("modality") == "object"]
    colours = {m["colour"] for m in metas if m.get("colour")}
    picker = client.get("/typographic.json").json()
    offered = {c for c in colours for e in picker["examples"] if c in e["caption"].split()}
    assert offered == colours or len(offered) >= 12  # one image of each colour first (red included)
    colour = sorted(colours)[0]
    found = client.get("/typographic.json", params={"pick": colour}).json()["examples"]
    assert found and all(colour in e["caption"].lower() for e in found)
    image = _object_image_id(url, colour)
    params = {"image": image, "word": "blue", "placement": "label", "classes": "red, blue"}
    params["control"] = "blank"
    data = client.get("/typographic.json", params=params).json()
    assert data["examples"] is None and data["examples_url"].startswith("/typographic.json")
    control = data["result"]["control"]
    assert control["top"] in ("red", "blue") and set(control["probabilities"]) == {"red", "blue"}
    assert control["image"] != data["result"]["images"]["after"]
    assert data["result"]["zero_shot"]["verdict"]
    assert "control=blank" in data["permalink"]
    html = client.get("/typographic", params=params).text
    assert "With a blank label the prediction is" in html
