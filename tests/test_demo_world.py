"""The synthetic shapes-and-words world: determinism and ground truth that matches the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from precompute import demo_world as world


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)


_NAMES = list(world.PALETTE)
_SHADES = np.array(
    [[world.shade(world.PALETTE[n], float(a)) for a in np.linspace(-0.3, 0.25, 23)] for n in _NAMES]
)  # (colours, shades, 3)


def dominant_colour(img: Image.Image) -> str:
    """Name of the dominant chromatic colour of an image (backgrounds are near-grey).

    Each strongly coloured pixel votes for the concept colour whose shades come closest to it.
    """
    px = _pixels(img).reshape(-1, 3)
    chroma = px.max(1) - px.min(1)
    strong = px[chroma > 45]
    assert len(strong) > 20, "no chromatic pixels"
    d = np.abs(strong[:, None, None, :] - _SHADES[None]).sum(-1).min(-1)  # (pixels, colours)
    votes = np.bincount(d.argmin(1), minlength=len(_NAMES))
    return _NAMES[int(votes.argmax())]


def test_api_shape() -> None:
    assert len(world.COLOURS) >= 8 and len(world.SHAPES) == 6
    assert world.CONCEPTS == world.COLOURS + world.SHAPES
    assert set(world.MODALITIES) == {"object", "drawing", "text", "labelled_object"}
    assert world.IMAGE_SIZE % 32 == 0
    assert world.TRAIN_SEED != world.HELDOUT_SEED


def test_deterministic_by_seed_and_index() -> None:
    for i in range(12):
        a, b = world.render(world.TRAIN_SEED, i), world.render(world.TRAIN_SEED, i)
        assert a.caption == b.caption and a.truth == b.truth
        assert a.image.tobytes() == b.image.tobytes()
        assert a.image.mode == "RGB" and a.image.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    train = [world.render(world.TRAIN_SEED, i).image.tobytes() for i in range(8)]
    held = [world.render(world.HELDOUT_SEED, i).image.tobytes() for i in range(8)]
    assert not set(train) & set(held)


def test_modalities_and_captions_are_varied() -> None:
    samples = [world.render(world.HELDOUT_SEED, i) for i in range(300)]
    assert {s.truth["modality"] for s in samples} == set(world.MODALITIES)
    assert len({s.caption for s in samples}) > 150
    assert {s.truth["colour"] for s in samples if s.truth["modality"] == "object"} == set(world.COLOURS)
    for s in samples:
        t = s.truth
        assert set(t) >= {"modality", "colour", "shape", "word"}
        if t["modality"] in ("object", "drawing"):
            assert t["word"] is None and t["colour"] in world.COLOURS and t["shape"] in world.SHAPES
            mentioned = {w for w in s.caption.split() if w in world.CONCEPTS}
            assert mentioned and mentioned <= {t["colour"], t["shape"]}
        elif t["modality"] == "text":
            assert t["word"] in s.caption
            assert t["word"].split() == [w for w in (t["colour"], t["shape"]) if w]
        else:
            assert t["word"] in world.CONCEPTS
            assert t["word"] in s.caption or t["template"] == "object_only"


@pytest.mark.parametrize("modality", ["object", "drawing", "labelled_object"])
def test_dominant_colour_is_the_caption_colour(modality: str) -> None:
    for i in range(40):
        s = world.render(world.HELDOUT_SEED, 50_000 + i, modality)
        said = [w for w in s.caption.split() if w in world.COLOURS]
        if said and s.truth["template"] != "word_only":
            assert said[0] == s.truth["colour"]
        img = s.image
        if modality == "labelled_object":  # mask the written word (and its label)
            arr = _pixels(img).copy()
            x0, y0, x1, y1 = s.truth["text_box"]
            arr[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = 128
            img = Image.fromarray(arr.astype(np.uint8))
        assert dominant_colour(img) == s.truth["colour"], (i, s.caption)


def test_overrides() -> None:
    s = world.render(world.HELDOUT_SEED, 3, "object", colour="pink", shape="heart", caption="photo")
    assert (s.truth["colour"], s.truth["shape"]) == ("pink", "heart")
    assert s.caption == "a photo of a pink heart"
    t = world.render(world.HELDOUT_SEED, 4, "labelled_object", colour="red", word="blue")
    assert t.truth["word"] == "blue" and t.truth["colour"] == "red"
    u = world.render(world.HELDOUT_SEED, 5, "text", word="star", ink="red")
    assert u.truth["word"] == "star" and u.truth["shape"] == "star" and u.truth["colour"] is None
    assert u.truth["ink"] == "red"


def _ink_mask(s: world.Sample) -> np.ndarray:
    """Pixels of the text box that carry the ink colour."""
    x0, y0, x1, y1 = s.truth["text_box"]
    box = _pixels(s.image)[y0:y1, x0:x1]
    ink = np.array(s.truth["ink_rgb"])
    bg = np.array(s.truth["bg_rgb"])
    return np.abs(box - ink).sum(-1) < np.abs(box - bg).sum(-1)


def _word_mask(word: str, font: str, size: int, shape: tuple[int, int]) -> np.ndarray:
    mask, _ = world._text_layer(word, font, size, 10_000, 10_000)  # noqa: SLF001
    return np.asarray(mask.resize((shape[1], shape[0]))) > 127


def test_written_word_matches_pixels() -> None:
    """The ink in the text box matches the truth word better than any other concept word."""
    checked = 0
    for i in range(60):
        s = world.render(world.HELDOUT_SEED, 70_000 + i, "text")
        t = s.truth
        if t["text_rotation"] or " " in t["word"]:
            continue
        ink = _ink_mask(s)
        assert ink.sum() > 15, "no ink where the word was written"
        scores = {}
        for w in world.CONCEPTS:
            ref = _word_mask(world._case(w, t["case"]), t["font"], t["word_px"], ink.shape)  # noqa: SLF001
            scores[w] = (ink & ref).sum() / max(1, (ink | ref).sum())
        assert max(scores, key=scores.__getitem__) == t["word"], (i, t, scores)
        checked += 1
    assert checked >= 20


def test_text_ink_is_independent_of_the_word() -> None:
    pairs = {(s.truth["word"], s.truth["ink"]) for s in (
        world.render(world.HELDOUT_SEED, 90_000 + i, "text", word="red") for i in range(40))}  # fmt: skip
    assert len({ink for _, ink in pairs}) >= 4


def test_render_word_and_builtin_font(monkeypatch: pytest.MonkeyPatch) -> None:
    img = world.render_word("purple")
    assert img.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    px = _pixels(img)
    assert (px.sum(-1) < 200).sum() > 30  # black ink on white
    monkeypatch.setattr(world, "font_names", lambda: ("builtin",))
    s = world.render(world.HELDOUT_SEED, 1, "text", word="circle")
    assert s.truth["font"] == "builtin" and _ink_mask(s).sum() > 15
    assert world.render_word("star", font="builtin").size == (world.IMAGE_SIZE, world.IMAGE_SIZE)


def test_matched_labels_share() -> None:
    def words(p: float) -> list[bool]:
        out = []
        for i in range(40):
            s = world.render(world.HELDOUT_SEED, 7_000 + i, "labelled_object", matched_labels=p)
            own = s.truth["colour"] if s.truth["word"] in world.COLOURS else s.truth["shape"]
            out.append(s.truth["word"] == own)
        return out

    assert all(words(1.0))
    assert not any(words(0.0))
    assert 0 < sum(words(0.5)) < 40


def test_distractor_words() -> None:
    from app.neurons.vocabulary import bpe_words

    pool = set(world.distractor_words())
    assert len(pool) > 15_000 and not pool & set(world.CONCEPTS)
    assert not pool & set(bpe_words())  # disjoint from the words stage's default vocabulary
    plain = [world.plan(world.TRAIN_SEED, i, "text") for i in range(60)]
    mixed = [world.plan(world.TRAIN_SEED, i, "text", distractors=0.5) for i in range(60)]
    distracted = [m for m in mixed if m["word"] in pool]
    assert 10 < len(distracted) < 50
    for m in distracted:  # no concept in the ground truth; captioned like any written word
        assert m["colour"] is None and m["shape"] is None and m["word"] in m["caption"]
    kept = [(p, m) for p, m in zip(plain, mixed, strict=True) if m["word"] not in pool]
    assert all(p == m for p, m in kept)  # the other samples do not move
    again = [world.plan(world.TRAIN_SEED, i, "text", distractors=0.5) for i in range(60)]
    assert again == mixed
    sample = world.render(world.TRAIN_SEED, 0, "text", word=distracted[0]["word"])
    assert sample.truth["word"] == distracted[0]["word"] and sample.truth["colour"] is None
