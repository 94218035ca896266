"""JSON Schemas of the JSON twins and POST bodies, for the OpenAPI document (:mod:`app.web.openapi`).

Each schema lists every key the views return, with its type (``null`` where a value can be
missing); ``required`` names the keys that are always there. Objects stay open
(``additionalProperties`` allowed) so that adding a key is not a breaking change; a map whose keys
are data (class names, package names, settings) says so with a typed ``additionalProperties``.
Keyed by the route path as FastAPI registers it (JSON twins: the ``.json`` path).
``tests/test_openapi_schemas.py`` checks the schemas against the golden JSON twins.
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
DATA_URI: Schema = {"type": "string", "description": "a data: URI (PNG or JPEG) or a path on this server"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def mapping(values: Schema, description: str) -> Schema:
    """An object whose keys are data (e.g. class names): every value typed as ``values``."""
    return {"type": "object", "additionalProperties": values, "description": description}


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    """An open object: ``properties`` typed, ``required`` (default: all of them) present."""
    names = list(properties) if required is None else required
    return {"type": "object", "properties": properties, "required": names, **extra}


N_STR, N_INT, N_NUM, N_BOOL, N_URL = (nullable(s) for s in (STR, INT, NUM, BOOL, URL))
FREE = mapping({}, "free-form data, as stored")
OPEN_CLIP_CFG = mapping({}, "a tower's settings, as open_clip names them (image_size, layers, width, ...)")

ERROR = obj(
    {"ok": {"const": False}, "status": INT, "title": STR, "error": STR},
    description="An error: HTTP status, a title and a message a person can act on.",
)

# ----------------------------------------------------------------------------- shared parts

MODEL_REF = obj({"slug": STR, "url": URL})
MODEL_NAMED = obj({"slug": STR, "name": STR, "url": URL})
LIVE = obj({"available": BOOL, "model": N_STR, "device": STR, "reason": N_STR},
           ["available", "model", "reason"],
           description="Whether the live model runs here, and why not.")  # fmt: skip
EXAMPLE_PICK = obj({"id": INT, "caption": N_STR, "thumb": URL}, description="A dataset image to try.")
PREVIEW = obj({"unit": INT, "url": URL, "thumb": URL})
PROVENANCE = obj({"text": STR, "card": N_URL}, description="Where the weights come from; the model card.")
GRID = {**array(INT), "description": "the layer's spatial grid [height, width]"}
HISTOGRAM = obj({"edges": array(NUM), "counts": array(INT), "n": INT},
                description="Histogram of the unit's activations over the stored image sample.")  # fmt: skip
IMAGE_REF = obj({"id": INT, "dataset": STR, "key": STR, "caption": N_STR}, description="A dataset image.")
IMAGE_META = mapping({}, "the dataset's metadata of the image (e.g. the demo world's ground truth)")
CARD_FIELDS: dict[str, Schema] = {"label": N_STR, "label_source": N_STR, "thumb": N_URL, "url": URL}
"""What a neuron's card adds to a listed neuron (analysis, search): best label, thumbnail, page."""
FV_SETTINGS = mapping({}, "the render's settings (algorithm, steps, size, device, ...)")
FV_IMAGE = obj(
    {"kind": STR, "index": INT, "objective": NUM, "image": URL, "width": N_INT, "height": N_INT,
     "settings": FV_SETTINGS},
    description="A stored feature visualization (kind: positive | negative | diversity).",
)  # fmt: skip
FV_STATE = obj(
    {"status": {"type": "string", "enum": ["rendering", "failed", "cancelled", "available"]},
     "error": N_STR, "elapsed_s": N_NUM, "settings": nullable(FV_SETTINGS), "poll": N_URL,
     "describe": STR, "can_start": BOOL, "note": STR},
    ["status", "error", "poll", "can_start"],
    description="No stored image: the state of an on-demand render, or that one can be started.",
)  # fmt: skip

# ------------------------------------------------------------------------------------ pages

HOME = obj(
    {
        "models": array(obj({
            "slug": STR, "name": STR, "pretrained": N_STR, "provenance": PROVENANCE, "embed_dim": INT,
            "image_size": INT, "n_layers": INT, "n_neurons": INT,
            "layers": array(obj({"name": STR, "n_units": INT, "url": URL})),
            "preview": array(obj({"unit": INT, "layer": STR, "url": URL, "thumb": URL})),
            "url": URL, "json": URL,
        })),
        "n_images": INT,
    },
    description="The indexed models.",
)  # fmt: skip

MODEL = obj(
    {
        "model": obj({
            "slug": STR, "name": STR, "pretrained": N_STR, "embed_dim": INT, "image_size": INT,
            "config": obj(
                {"open_clip": obj({"embed_dim": INT, "vision_cfg": OPEN_CLIP_CFG,
                                   "text_cfg": OPEN_CLIP_CFG},
                                  [], additionalProperties={}, description="the open_clip model config")},
                [], additionalProperties=FREE, description="the model's stored config"),
            "provenance": PROVENANCE,
        }),
        "exports": obj(
            {t: obj({e: URL for e in ("jsonl", "csv", "parquet")})
             for t in ("units", "labels", "examples", "words")},
            description="Bulk downloads of the model's tables, one URL per format.",
        ),
        "layers": array(obj({
            "name": STR, "kind": STR, "position": INT, "n_units": INT, "n_indexed": INT, "grid": GRID,
            "is_last": BOOL, "url": URL, "json": URL, "preview": array(PREVIEW),
        })),
        "live": BOOL,
    },
    description="A model and its indexed layers.",
)  # fmt: skip

NEURON_ROW = obj(
    {"unit": INT, "mean": NUM, "std": NUM, "max": NUM, "multimodality": N_NUM, "label": N_STR,
     "label_source": N_STR, "label_score": N_NUM, "label_auc": N_NUM, "label_precision": N_NUM,
     "label_weak": BOOL, "url": URL, "json": URL, "thumb": N_URL},
)  # fmt: skip

LAYER = obj(
    {
        "model": MODEL_NAMED,
        "layer": obj({"name": STR, "kind": STR, "n_units": INT, "grid": GRID, "is_last": BOOL}),
        "query": obj({"sort": STR, "order": {"type": "string", "enum": ["asc", "desc"]}, "q": N_STR,
                      "per_page": INT, "min_auc": N_NUM}),  # fmt: skip
        "page": INT,
        "pages": INT,
        "total": INT,
        "sort_keys": array(STR),
        "has_labels": BOOL,
        "prev_page": N_URL,
        "next_page": N_URL,
        "neurons": array(NEURON_ROW),
    },
    description="One page of a layer's neurons (sorted, filtered).",
)

EXAMPLE = obj(
    {"rank": INT, "value": NUM, "image": obj({**IMAGE_REF["properties"], "meta": IMAGE_META}),
     "thumb": URL, "heatmap": {**array(array(NUM)), "description": "the neuron's map over the image"}},
)  # fmt: skip

EVIDENCE = obj(
    {"auc": N_NUM, "p_value": N_NUM, "precision_top20": N_NUM, "n_images": INT, "n_positive": INT,
     "tag_source": N_STR, "compared_with": N_STR, "backed": BOOL, "weak": BOOL},
    description="Held-out evidence of a label (AUC, Mann-Whitney p, precision of the top 20).",
)  # fmt: skip
BAR = obj({"x": NUM, "w": NUM, "h": NUM, "y": NUM})
SEGMENT = obj({"x": NUM, "y": NUM, "width": NUM, "height": NUM, "colour": STR, "title": STR})
CATEGORY = obj({"name": STR, "count": INT, "mean_sigma": NUM})

SECTIONS = obj(
    {
        "labels": array(obj({
            "label": STR, "source": STR, "score": N_NUM, "rank": INT, "evidence": nullable(EVIDENCE),
            "weak": BOOL, "pseudo": BOOL, "title": BOOL,
            "histogram": nullable(obj({"width": INT, "height": INT, "positive": array(BAR),
                                       "negative": array(BAR), "lo": N_NUM, "hi": N_NUM})),
        })),
        "featurevis": {"anyOf": [array(FV_IMAGE), FV_STATE]},
        "words": array(obj({"word": STR, "value": NUM, "rank": INT, "relative": NUM, "percentile": N_NUM,
                            "z": N_NUM, "mean": NUM, "below_mean": BOOL})),
        "condprob": obj({
            "n": INT, "sigma": NUM, "edges_sigma": array(NUM), "counts": array(INT),
            "categories": array(CATEGORY),
            "shares": mapping(array(NUM), "category → its share of the images in each bin"),
            "tag_source": N_STR,
            "svg": obj({
                "width": INT, "height": INT, "pad_left": NUM, "pad_right": NUM, "plot_top": NUM,
                "plot_bottom": NUM, "count_top": NUM, "count_bottom": NUM, "zero_x": N_NUM,
                "x_ticks": array({"type": "array", "items": {"anyOf": [NUM, STR]}, "minItems": 2,
                                  "maxItems": 2, "description": "[position, label]"}),
                "segments": array(SEGMENT), "count_bars": array(SEGMENT),
                "legend": array(obj({**CATEGORY["properties"], "colour": STR})),
            }),
        }),
        "related": obj({
            "method": STR, "precomputed": BOOL, "explanation": STR,
            "neurons": array(obj({"unit": INT, "layer": STR, "url": URL, "similarity": NUM, "label": N_STR,
                                  "thumb": N_URL})),
        }),
    },
    [],
    description="The optional sections that have data for this neuron.",
)  # fmt: skip

NEURON = obj(
    {
        "model": MODEL_NAMED,
        "layer": obj({"name": STR, "kind": STR, "n_units": INT, "grid": GRID, "is_last": BOOL, "url": URL}),
        "unit": INT,
        "permalink": URL,
        "stats": obj({"mean": NUM, "std": NUM, "max": NUM, "multimodality": N_NUM, "n_examples": INT,
                      "top_k_min": N_NUM, "sample_size": INT}),  # fmt: skip
        "prev": N_URL,
        "next": N_URL,
        "examples": array(EXAMPLE),
        "histogram": nullable(HISTOGRAM),
        "sections": SECTIONS,
    },
    description="A neuron: statistics, top dataset examples (with heatmaps), labels with evidence.",
)

FEATUREVIS = obj(
    {"neuron": URL, "images": array(FV_IMAGE),
     "start": obj({"method": STR, "url": URL, "csrf": STR}, description="how to start a render"),
     "status": {"type": "string",
                "enum": ["done", "rendering", "failed", "cancelled", "available", "unavailable"]},
     "error": N_STR, "elapsed_s": N_NUM, "settings": nullable(FV_SETTINGS), "note": STR},
    ["neuron", "images", "start", "status"],
    description="A neuron's feature visualizations (stored, or the state of an on-demand render).",
)  # fmt: skip

ANALYZE_FORM = obj(
    {"post": URL, "post_json": URL,
     "fields": obj({"image": STR, "classes": STR, "top_k": STR, "example": STR},
                   description="the fields of a POST, in words"),
     "max_upload_bytes": INT, "max_image_pixels": INT, "formats": array(STR), "stores_analyses": BOOL,
     "max_stored_analyses": INT, "max_stored_analysis_bytes": INT, "live": LIVE,
     "examples": array(EXAMPLE_PICK)},
    description="What POST /analyze.json accepts (limits, formats, fields) and whether it can run.",
)  # fmt: skip

ZERO_SHOT = obj(
    {"classes": array(STR), "prompt": STR, "logit_scale": NUM,
     "probabilities": mapping(NUM, "class → probability"),
     "ranked": array(obj({"class": STR, "probability": NUM})), "error": STR},
    ["classes", "prompt"],
    description="Zero-shot probabilities of the given classes (or why there are none: error).",
)  # fmt: skip

ANALYSIS = obj(
    {
        "id": STR,
        "stored": BOOL,
        "not_stored": N_STR,
        "permalink": N_URL,
        "json": N_URL,
        "created_at": nullable({"type": "string", "format": "date-time"}),
        "model": MODEL_NAMED,
        "image": obj({
            "url": DATA_URI, "width": N_INT, "height": N_INT, "view": STR,
            "source": nullable(obj({"format": N_STR, "mode": STR, "width": INT, "height": INT, "frames": INT,
                                    "frames_capped": BOOL, "exif_oriented": BOOL}, [],
                                   description="the uploaded file as decoded")),
        }),
        "layers": array(obj({
            "name": STR, "kind": N_STR, "is_last": N_BOOL, "grid": nullable(GRID), "url": URL,
            "sample_size": INT,
            "neurons": array(obj({
                "unit": INT, "value": NUM, "percentile": N_NUM, "z": N_NUM,
                "heatmap": array(array(NUM)), "overlay": {**STR, "description": "PNG data: URI"},
                **CARD_FIELDS,
            }, ["unit", "value", "percentile", "z", "heatmap", *CARD_FIELDS])),
        })),
        "zero_shot": nullable(ZERO_SHOT),
        "value": STR,
        "percentile": STR,
        "z": STR,
        "sort": {"type": "string", "enum": ["percentile", "z"]},
        "sorts": mapping(STR, "sort key → what it ranks by"),
        "ranked_by": STR,
    },
    description="An analysis: every indexed layer's most active neurons on the image, with heatmaps "
    "and dataset percentiles and z-scores, and zero-shot scores for the given classes.",
)  # fmt: skip

RECIPE_TERM = obj({"unit": INT, "weight": NUM, "cosine": NUM, "label": N_STR, "thumb": N_URL, "url": URL})
SEARCH = obj(
    {
        "query": STR,
        "sort": {"type": "string", "enum": ["percentile", "z"]},
        "sorts": mapping(obj({"label": STR, "url": URL}), "each way to sort the reading neurons: its link"),
        "model": nullable(MODEL_REF),
        "used_query": N_STR,
        "truncated": BOOL,
        "note": N_STR,
        "zero_shot": nullable(obj({
            "layers": array(obj({
                "name": STR, "ranking": {"type": "string", "enum": ["evidence", "direction"]},
                "neurons": array(obj({
                    "unit": INT, "score": NUM, "raw": NUM, "cosine": N_NUM, "std": NUM, "evidence": N_NUM,
                    "picture_d": N_NUM, "word_z": N_NUM, "z": NUM, **CARD_FIELDS,
                }, ["unit", "score", "raw", "cosine", "std", *CARD_FIELDS])),
                "evidence": obj({"pictures": INT, "images": INT, "words": INT}),
                "confidence": NUM, "url": URL,
            }, ["name", "ranking", "neurons", "url"])),
            "error": STR,
        }, ["layers"])),
        "reading": nullable(obj({
            "image": DATA_URI,
            "layers": array(obj({
                "name": STR, "url": URL,
                "neurons": array(obj({"unit": INT, "value": NUM, "percentile": N_NUM, "z": N_NUM,
                                      **CARD_FIELDS})),
            })),
        })),
        "recipe": nullable(obj({
            "layer": STR, "layer_url": URL, "terms": array(RECIPE_TERM), "cosine": NUM, "centred": BOOL,
            "explain": STR, "null": obj({"median": N_NUM, "p95": N_NUM, "n": INT}), "refused": BOOL,
            "note": STR,
        }, ["layer", "layer_url", "terms", "cosine", "centred", "explain"])),
        "preparing": nullable(obj({
            "model": STR, "state": {"type": "string", "enum": ["preparing", "ready", "failed"]},
            "percent": INT, "phase": STR, "done": INT, "total": INT, "seconds": NUM, "retry_after": NUM,
            "message": N_STR,
        })),
        "suggestions": array(obj({"query": STR, "url": URL})),
        "explain": obj({"zero_shot": STR, "reading": STR, "confidence": STR}, ["zero_shot", "reading"]),
        "confidence": N_NUM,
        "out_of_vocabulary": array(STR),
        "null_frame": N_STR,
        "warnings": array(STR),
    },
    ["query", "model", "used_query", "truncated", "note", "zero_shot", "reading", "recipe", "preparing",
     "suggestions", "explain"],
    description="Neurons whose directions match a text query (zero-shot) and that read it in an image.",
)  # fmt: skip

CHANGE = obj({"unit": INT, "before": NUM, "after": NUM, "delta": NUM, "delta_sigma": N_NUM, "url": URL,
              "label": N_STR, "thumb": N_URL})  # fmt: skip
TYPO_PARAMS = ("image", "analysis", "word", "placement", "size", "colour", "classes", "control", "pick")
TYPOGRAPHIC = obj(
    {
        "live": LIVE,
        "examples": nullable(array(EXAMPLE_PICK)),
        "suggestion": nullable(obj({"image": STR, "word": STR, "placement": STR, "classes": STR,
                                    "caption": STR, "url": URL})),
        "options": obj({"placements": array(STR), "colours": array(STR),
                        "size": obj({"min": INT, "max": INT, "default": INT, "unit": STR})}),
        "post": URL,
        "params": obj({k: STR for k in TYPO_PARAMS}, [], description="the query parameters given"),
        "classes": array(STR),
        "permalink": URL,
        "result": nullable(obj({
            "model": MODEL_REF,
            "images": obj({"before": DATA_URI, "after": DATA_URI, "side": INT}),
            "zero_shot": obj({
                "prompts": array(STR), "logit_scale": NUM,
                "classes": array(obj({"class": STR, "before": NUM, "after": NUM, "delta": NUM})),
                "top_before": STR, "top_after": STR, "flipped": BOOL, "attack_succeeded": N_BOOL,
                "verdict": STR,
            }),
            "control": nullable(obj({"kind": STR, "image": DATA_URI, "top": STR,
                                     "probabilities": mapping(NUM, "class → probability")})),
            "changes": array(obj({"layer": STR, "url": URL, "rose": array(CHANGE), "fell": array(CHANGE)})),
            "change_unit": STR,
        })),
        "source": nullable(obj({"kind": STR, "id": {"type": ["integer", "string"]}, "caption": STR,
                                "preview": DATA_URI})),
        "attack": obj({"word": STR, "placement": STR, "size": INT, "colour": STR}),
        "examples_url": URL,
    },
    ["live", "examples", "suggestion", "options", "post", "params", "classes", "permalink", "result",
     "source"],
    description="The typographic-attack lab: options, and the attack's result when one was asked for.",
)  # fmt: skip

ATLAS = obj(
    {"model": MODEL_REF, "layer": obj({"name": STR, "url": URL, "n_units": INT}), "method": N_STR,
     "features": N_STR,
     "points": array(obj({"unit": INT, "x": NUM, "y": NUM, "label": N_STR, "url": URL, "thumb": N_URL,
                          "col": INT, "row": INT})),
     "thumbnails": BOOL, "note": N_STR, "grid": obj({"cols": INT, "rows": INT}), "sprite": N_URL},
    ["model", "layer", "method", "features", "points", "thumbnails", "note"],
    description="A 2-D map of a layer's neurons (points with coordinates, labels and links).",
)  # fmt: skip

PLACE: dict[str, Schema] = {"percentile": N_NUM, "z": N_NUM}
"""A value on the unit's own scale (percentile in its dataset sample, z-score)."""
EVIDENCE_IMAGE = obj({"value": NUM, **PLACE, "caption": N_STR, "thumb": URL})
MULTIMODAL = obj(
    {"model": MODEL_REF, "layer": obj({"name": STR, "url": URL}),
     "layers": array(obj({"name": STR, "url": URL, "current": BOOL})), "n": INT, "tag_source": N_STR,
     "explain": STR,
     "neurons": array(obj({
         "unit": INT, "url": URL, "multimodality": N_NUM, "concept": N_STR, "picture_d": N_NUM,
         "word_d": N_NUM, "correlation": N_NUM, "champion": BOOL, "strength": N_NUM, "label": N_STR,
         "label_source": N_STR, "photos": array(EVIDENCE_IMAGE),
         "concept_words": array(obj({"word": STR, "value": NUM, **PLACE, "thumb": N_URL})),
         "concept_word": nullable(obj({"value": NUM, **PLACE})),
         "concept_pictures": nullable(obj({"value": NUM, **PLACE})),
         "below_own_mean": array({"type": "string", "enum": ["word", "pictures"]}),
         "top_words": array(obj({"word": STR, "value": NUM, **PLACE})),
         "no_word_excites": BOOL,
         "text_examples": array(EVIDENCE_IMAGE),
         "scatter": nullable(obj({"size": INT, "points": array(obj({"concept": STR, "x": NUM, "y": NUM,
                                                                    "picture": NUM, "word": NUM}))})),
     })),
     "note": N_STR},
    description="The neurons that answer to a concept both as a picture and as a written word.",
)  # fmt: skip

HEALTH = obj(
    {"ok": BOOL, "db": STR, "models": array(STR), "live": STR},
    ["ok", "db"],
    description="Liveness: whether the index database answers, the models served, the live model's state.",
)

VERSIONS = obj(
    {"python": STR, "sqlite": STR, "packages": mapping(N_STR, "package → installed version (null: absent)"),
     "htmx": N_STR, "database": STR, "live": STR},
    description="Versions of Python, SQLite and the main packages.",
)  # fmt: skip

UNIT_CARD = obj(
    {"ref": STR, "model": STR, "layer": STR, "unit": INT, "found": BOOL, "url": URL, "json": URL,
     "stats": obj({"mean": NUM, "std": NUM, "max": NUM, "multimodality": N_NUM}),
     "labels": array(obj({"label": STR, "source": STR, "score": N_NUM})),
     "featurevis": N_URL,
     "examples": array(obj({"rank": INT, "value": NUM, "thumb": URL, "image": IMAGE_REF})),
     "words": array(obj({"word": STR, "value": NUM})),
     "histogram": nullable(HISTOGRAM)},
    ["ref", "model", "layer", "unit", "found"],
    description="A unit and its evidence (only ref, model, layer, unit and found when not indexed).",
)  # fmt: skip
LIST = obj({"title": N_STR, "permalink": URL, "compare": N_URL, "max_units": INT, "units": array(UNIT_CARD)},
           description="A list of units (from ?units=model/layer/unit,...) with their evidence.")  # fmt: skip
COMPARE = obj({"permalink": URL, "list": URL, "units": array(UNIT_CARD)},
              description="2–4 units side by side.")
OEMBED = obj(
    {"version": {"const": "1.0"}, "type": {"const": "rich"}, "provider_name": STR, "provider_url": URL,
     "title": STR, "html": STR, "width": INT, "height": INT, "thumbnail_url": URL, "thumbnail_width": INT,
     "thumbnail_height": INT},
    description="oEmbed (https://oembed.com): a rich embed (an iframe) with a thumbnail.",
)  # fmt: skip

#: Query parameters whose schema is narrower than the view's signature says (FastAPI path → name →
#: schema); the view still checks them (oEmbed: another format is a 400 naming the one supported).
QUERY_PARAMETERS: dict[str, dict[str, Schema]] = {
    "/-/oembed": {"format": {"type": "string", "enum": ["json"], "default": "json",
                             "description": "only json (another format is a 400)"}},
}  # fmt: skip

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

#: POST /analyze.json's answer (the featurevis twin answers with its GET's data).
POST_RESPONSES: dict[str, Schema] = {"/analyze.json": ANALYSIS}

UPLOAD_FORM = obj(
    {
        "image": {"type": "string", "format": "binary",
                  "description": "the image file (PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF; "
                                 "see GET /analyze.json)"},
        "example": {"type": "integer", "minimum": 0, "description": "or: the id of a dataset image"},
        "classes": {"type": "string", "description": "comma-separated class names for zero-shot scores"},
        "top_k": {"type": "integer", "minimum": 1, "description": "neurons per layer"},
    },
    [],
)  # fmt: skip
CSRF_FIELD: Schema = {"type": "string", "description": "the visitor's CSRF token (browser forms; "
                      "or the X-CSRF-Token header)"}  # fmt: skip
RAW_IMAGE: Schema = {"type": "string", "format": "binary",
                     "description": "the image file itself as the body "
                                    "(classes, top_k: query parameters)"}  # fmt: skip
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")

NO_OPTIONS = obj({}, [], description="nothing is read from the body: the render takes no options")

#: Request bodies of the POST routes: media type → schema (browser forms also carry ``csrf_token``).
REQUEST_BODIES: dict[str, dict[str, Schema]] = {
    "/analyze.json": {"multipart/form-data": UPLOAD_FORM, **{t: RAW_IMAGE for t in RAW_IMAGE_TYPES}},
    "/analyze": {
        "multipart/form-data": {**UPLOAD_FORM,
                                "properties": {**UPLOAD_FORM["properties"], "csrf_token": CSRF_FIELD}},
    },
    "/typographic": {
        "multipart/form-data": obj(
            {"image": UPLOAD_FORM["properties"]["image"], "word": STR, "placement": STR, "size": STR,
             "colour": STR, "classes": STR, "csrf_token": CSRF_FIELD},
            [],
        ),
    },
    # the neuron page's button: an htmx POST without fields; its CSRF token travels in the
    # X-CSRF-Token header (documented as a parameter); the JSON twin needs no token
    "/models/{model}/layers/{layer}/neurons/{unit}/featurevis": {"application/json": NO_OPTIONS},
    "/models/{model}/layers/{layer}/neurons/{unit}/featurevis.json": {"application/json": NO_OPTIONS},
}
#: POST routes whose body may be left out.
OPTIONAL_BODIES = ("/models/{model}/layers/{layer}/neurons/{unit}/featurevis",
                   "/models/{model}/layers/{layer}/neurons/{unit}/featurevis.json")  # fmt: skip
