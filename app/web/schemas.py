"""JSON Schemas of the JSON twins and POST bodies, for the OpenAPI document (:mod:`app.web.openapi`).

Each schema names the keys a client can rely on (``required``) with their types; objects stay
open (``additionalProperties`` allowed) so that adding a key is not a breaking change. Keyed by
the route path as FastAPI registers it (JSON twins: the ``.json`` path).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY_OBJ: Schema = {"type": "object"}
URL: Schema = {"type": "string", "description": "a path on this server (or an absolute URL)"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    """An open object: ``properties`` typed, ``required`` (default: all of them) present."""
    names = list(properties) if required is None else required
    return {"type": "object", "properties": properties, "required": names, **extra}


ERROR = obj(
    {"ok": {"const": False}, "status": INT, "title": STR, "error": STR},
    description="An error: HTTP status, a title and a message a person can act on.",
)

MODEL_REF = obj({"slug": STR, "url": URL}, ["slug"])
LAYER_REF = obj({"name": STR, "url": URL}, ["name"])
THUMB = {"anyOf": [URL, ANY_OBJ, {"type": "null"}]}  # a URL, or {url, width, height}
LIVE = obj({"available": BOOL, "model": nullable(STR), "reason": nullable(STR)}, ["available"])
EXAMPLE_PICK = obj({"id": INT, "caption": nullable(STR), "thumb": THUMB}, ["id"])

HOME = obj(
    {
        "models": array(obj({"slug": STR, "name": STR, "n_layers": INT, "n_neurons": INT,
                             "layers": array(ANY_OBJ), "url": URL, "json": URL},
                            ["slug", "name", "url"])),  # fmt: skip
        "n_images": INT,
    },
    ["models"],
    description="The indexed models.",
)

MODEL = obj(
    {
        "model": obj({"slug": STR, "name": STR, "pretrained": nullable(STR), "embed_dim": INT,
                      "image_size": INT}, ["slug", "name"]),  # fmt: skip
        "layers": array(obj({"name": STR, "kind": STR, "position": INT, "n_units": INT,
                             "n_indexed": INT, "is_last": BOOL, "url": URL, "json": URL},
                            ["name", "n_units", "url"])),  # fmt: skip
        "live": BOOL,
    },
    ["model", "layers"],
    description="A model and its indexed layers.",
)

NEURON_ROW = obj(
    {"unit": INT, "mean": nullable(NUM), "std": nullable(NUM), "max": nullable(NUM),
     "label": nullable(STR), "label_source": nullable(STR), "url": URL, "json": URL, "thumb": THUMB},
    ["unit", "url"],
)  # fmt: skip

LAYER = obj(
    {
        "model": MODEL_REF,
        "layer": obj({"name": STR, "kind": STR, "n_units": INT, "grid": array(INT), "is_last": BOOL},
                     ["name", "n_units"]),  # fmt: skip
        "query": ANY_OBJ,
        "page": INT,
        "pages": INT,
        "total": INT,
        "sort_keys": array(STR),
        "prev_page": nullable(URL),
        "next_page": nullable(URL),
        "neurons": array(NEURON_ROW),
    },
    ["model", "layer", "page", "pages", "total", "neurons"],
    description="One page of a layer's neurons (sorted, filtered).",
)

EXAMPLE = obj(
    {"rank": INT, "value": NUM, "image": ANY_OBJ, "thumb": THUMB, "heatmap": nullable(STR)},
    ["value", "image"],
)

NEURON = obj(
    {
        "model": MODEL_REF,
        "layer": obj({"name": STR, "kind": STR, "n_units": INT, "url": URL}, ["name", "n_units"]),
        "unit": INT,
        "permalink": URL,
        "stats": obj({"mean": nullable(NUM), "std": nullable(NUM), "max": nullable(NUM),
                      "n_examples": INT, "sample_size": INT}, []),  # fmt: skip
        "prev": nullable(URL),
        "next": nullable(URL),
        "examples": array(EXAMPLE),
        "histogram": nullable(ANY_OBJ),
        "sections": ANY_OBJ,
    },
    ["model", "layer", "unit", "stats", "examples"],
    description="A neuron: statistics, top dataset examples (with heatmaps), labels with evidence.",
)

FEATUREVIS = obj(
    {"neuron": STR, "images": array(ANY_OBJ), "status": STR, "error": nullable(STR)},
    ["images"],
    description="A neuron's feature visualizations (stored, or the state of an on-demand render).",
)

ANALYZE_FORM = obj(
    {"post": URL, "post_json": URL, "fields": ANY_OBJ, "max_upload_bytes": INT, "max_image_pixels": INT,
     "formats": array(STR), "live": LIVE, "examples": array(EXAMPLE_PICK)},
    ["post", "max_upload_bytes", "max_image_pixels", "formats", "live"],
    description="What POST /analyze.json accepts (limits, formats, fields) and whether it can run.",
)  # fmt: skip

ANALYSIS = obj(
    {"id": nullable(STR), "permalink": nullable(URL), "model": ANY_OBJ, "image": ANY_OBJ,
     "layers": array(ANY_OBJ), "stored": BOOL},
    [],
    description="An analysis: every indexed layer's most active neurons on the image, with heatmaps "
    "and dataset percentiles, and zero-shot scores for the given classes.",
)  # fmt: skip

SEARCH = obj(
    {"query": STR, "model": nullable(MODEL_REF), "used_query": nullable(STR), "truncated": BOOL,
     "note": nullable(STR), "zero_shot": nullable(ANY_OBJ), "reading": nullable(ANY_OBJ),
     "recipe": nullable(ANY_OBJ), "suggestions": array(ANY_OBJ)},
    ["query"],
    description="Neurons whose directions match a text query (zero-shot) and that read it in an image.",
)  # fmt: skip

TYPOGRAPHIC = obj(
    {"live": LIVE, "examples": array(EXAMPLE_PICK), "options": ANY_OBJ, "post": URL, "params": ANY_OBJ,
     "classes": array(STR), "permalink": nullable(URL), "result": nullable(ANY_OBJ),
     "source": nullable(ANY_OBJ)},
    ["live", "options"],
    description="The typographic-attack lab: options, and the attack's result when one was asked for.",
)  # fmt: skip

ATLAS = obj(
    {"model": MODEL_REF, "layer": ANY_OBJ, "method": STR, "points": array(ANY_OBJ), "note": nullable(STR)},
    ["model", "layer", "points"],
    description="A 2-D map of a layer's neurons (points with coordinates, labels and links).",
)

MULTIMODAL = obj(
    {"model": MODEL_REF, "layer": nullable(ANY_OBJ), "layers": array(ANY_OBJ), "n": INT,
     "neurons": array(ANY_OBJ), "note": nullable(STR)},
    ["model", "neurons"],
    description="The neurons that answer to a concept both as a picture and as a written word.",
)  # fmt: skip

HEALTH = obj(
    {"ok": BOOL, "db": STR, "models": array(STR), "live": STR},
    ["ok", "db"],
    description="Liveness: whether the index database answers, the models served, the live model's state.",
)

VERSIONS = obj(
    {"python": STR, "sqlite": STR, "packages": {"type": "object", "additionalProperties": nullable(STR)},
     "database": STR, "live": STR},
    ["python", "packages"],
    description="Versions of Python, SQLite and the main packages.",
)  # fmt: skip

UNIT_CARD = obj({"ref": STR, "found": BOOL}, ["ref", "found"])
LIST = obj({"title": nullable(STR), "permalink": URL, "units": array(UNIT_CARD)}, ["units"],
           description="A list of units (from ?units=model/layer/unit,...) with their evidence.")
COMPARE = obj({"permalink": URL, "units": array(UNIT_CARD)}, ["units"],
              description="2–4 units side by side.")
OEMBED = obj({"version": STR, "type": STR}, ["version", "type"], description="oEmbed (https://oembed.com).")

#: Response schema of each JSON route (FastAPI path).
RESPONSES: dict[str, Schema] = {
    "/.json": HOME,
    "/models/{model}.json": MODEL,
    "/models/{model}/layers/{layer}.json": LAYER,
    "/models/{model}/layers/{layer}/neurons/{unit}.json": NEURON,
    "/models/{model}/layers/{layer}/neurons/{unit}/featurevis.json": FEATUREVIS,
    "/analyze.json": ANALYZE_FORM,
    "/analyses/{the_id}.json": ANALYSIS,
    "/search.json": SEARCH,
    "/typographic.json": TYPOGRAPHIC,
    "/models/{model}/layers/{layer}/atlas.json": ATLAS,
    "/models/{model}/multimodal.json": MULTIMODAL,
    "/-/health": HEALTH,
    "/-/health.json": HEALTH,
    "/-/versions.json": VERSIONS,
    "/lists.json": LIST,
    "/compare.json": COMPARE,
    "/-/oembed": OEMBED,
}

#: POST /analyze.json's answer.
POST_RESPONSES: dict[str, Schema] = {"/analyze.json": ANALYSIS}

UPLOAD_FORM = obj(
    {
        "image": {"type": "string", "format": "binary",
                  "description": "the image file (PNG, JPEG, GIF, WebP, BMP, TIFF; see GET /analyze.json)"},
        "example": {"type": "integer", "minimum": 0, "description": "or: the id of a dataset image"},
        "classes": {"type": "string", "description": "comma-separated class names for zero-shot scores"},
        "top_k": {"type": "integer", "minimum": 1, "description": "neurons per layer"},
    },
    [],
)  # fmt: skip

#: Request bodies of the POST routes (multipart forms; browser forms also carry ``csrf_token``).
REQUEST_BODIES: dict[str, Schema] = {
    "/analyze.json": UPLOAD_FORM,
    "/analyze": {**UPLOAD_FORM, "properties": {**UPLOAD_FORM["properties"], "csrf_token": STR}},
    "/typographic": obj(
        {"image": UPLOAD_FORM["properties"]["image"], "word": STR, "placement": STR, "size": STR,
         "colour": STR, "classes": STR, "csrf_token": STR},
        [],
    ),  # fmt: skip
}
